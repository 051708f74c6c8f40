//! Logging, tracing and metrics shared by every service: human-readable or JSON lines on stderr, filtered by
//! `RUST_LOG`; OpenTelemetry spans exported over OTLP/gRPC when an endpoint is configured; the W3C trace-context
//! carriers that put every hop of one ACME request (wfe → ra → sa/va/ca → remote vas/publisher) into one trace; and
//! Prometheus metrics on a separate debug listener.

pub mod kept;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How long spans wait to be exported in a batch: short, so that a trace is complete in the viewer within a second
/// or two of the request.
const EXPORT_DELAY: Duration = Duration::from_millis(500);

/// Whether this process exports spans. Without an exporter a span has no trace context to send or continue, so the
/// carriers skip their work on every gRPC call (a header parsed, a context built, both thrown away).
static SPANS_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether this process's Prometheus recorder is installed: metric handles taken before it count nowhere, so they
/// are kept only after.
static RECORDER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans: where it does not, a span per request or call is opened at debug level only
/// (`grpc::serve_checked`, the wfe's `acme` span), since opening one costs every layer of the subscriber its work
/// (a registry slot, the fields formatted, the filter asked) and, without an exporter, only log lines inside it at
/// debug level would show it.
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// Whether the recorder that `[telemetry] metrics_listen` serves is installed in this process.
pub(crate) fn recorder_installed() -> bool {
    RECORDER_INSTALLED.load(Ordering::Acquire)
}

/// A service's `[telemetry]` section.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// JSON log lines instead of human-readable ones.
    #[serde(default)]
    pub json_logs: bool,
    /// Where spans go over OTLP/gRPC (`http://jaeger:4317`); without one, spans are only logged, never exported.
    pub otlp_endpoint: Option<String>,
    /// Where `GET /metrics` (Prometheus text format) is served, apart from the service's own listeners.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsListener { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// Keeps the span exporter of [`init`]; [`Telemetry::shutdown`] exports what is left.
#[must_use = "dropping it without shutdown loses the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still waiting, then stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The batch exporter's flush blocks until its thread has exported.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber (logs, and spans to OTLP when configured) for the process running `service`.
///
/// Call it inside the Tokio runtime: the OTLP exporter's gRPC channel runs on it. Several services may share one
/// test process: only the first installation wins.
pub fn init(service: &str, config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    if let Some(addr) = config.metrics_listen {
        serve_metrics(addr)?;
    }
    let build = crate::build::get();
    metrics::gauge!("quarry_build_info", "version" => build.version, "commit" => build.commit).set(1.0);
    Ok(init_tracing(service, config))
}

/// Latency buckets (seconds) of every histogram: from a cached read to a slow validation.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the process's Prometheus recorder and serves it on `addr` (`GET /metrics`).
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), TelemetryError> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| TelemetryError::MetricsListener { addr, source })?;
    // Only the first recorder of a process counts (tests run several services in one).
    if metrics::set_global_recorder(recorder).is_err() {
        return Ok(());
    }
    RECORDER_INSTALLED.store(true, Ordering::Release);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let limits = crate::http_server::ListenerConfig::default();
    tokio::spawn(crate::http_server::serve("metrics", listener, None, app, limits, std::future::pending()));
    Ok(())
}

fn init_tracing(service: &str, config: &TelemetryConfig) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = config.otlp_endpoint.as_deref().and_then(|endpoint| match exporter(service, endpoint) {
        Ok(provider) => Some(provider),
        Err(err) => {
            eprintln!("{service}: no span export to {endpoint}: {err}");
            None
        }
    });
    let spans = provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("quarry")));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in log files or a log pipeline.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    let lines = if config.json_logs { lines.json().boxed() } else { lines.boxed() };
    let installed = tracing_subscriber::registry().with(filter).with(lines).with(spans).try_init().is_ok();
    if installed {
        // Only the call that installed the subscriber says: a later one in the same process (services started
        // in-process by tests) installs nothing and must not switch the carriers off.
        SPANS_EXPORTED.store(provider.is_some(), Ordering::Relaxed);
        tracing::debug!(service, export = config.otlp_endpoint.as_deref(), "telemetry initialised");
    }
    Telemetry { provider: provider.filter(|_| installed) }
}

fn exporter(service: &str, endpoint: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

/// Writes the current span's trace context (`traceparent`) into outgoing gRPC metadata.
pub fn inject_into(metadata: &mut tonic::metadata::MetadataMap) {
    if !spans_exported() {
        return;
    }
    struct Carrier<'a>(&'a mut tonic::metadata::MetadataMap);
    impl Injector for Carrier<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(mut value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value),
            ) {
                // A span's identifiers differ on every call: kept out of the HPACK tables (see
                // `grpc::request_with_deadline`). `tracestate` stays indexable: it is the same on every call.
                if key.as_str() == "traceparent" {
                    value.set_sensitive(true);
                }
                self.0.insert(key, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut Carrier(metadata));
}

/// Makes `span` a child of the trace context the caller sent in `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !spans_exported() {
        return;
    }
    struct Carrier<'a>(&'a http::HeaderMap);
    impl Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    let parent = TraceContextPropagator::new().extract(&Carrier(headers));
    let _ = span.set_parent(parent);
}

/// Logs only, never span export: the command-line tools' set-up.
pub fn init_logs(tool: &str) {
    let _logs_only = init_tracing(tool, &TelemetryConfig::default());
}
