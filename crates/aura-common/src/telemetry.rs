//! Logs and traces.
//!
//! Logs: human-readable lines on a terminal, JSON lines otherwise (what log collectors want).
//! The level comes from `AURA_LOG`, then `RUST_LOG`, default `info`.
//!
//! Traces: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not at all otherwise, so a default
//! install pays nothing for them. The OpenTelemetry SDK reads the standard variables itself:
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` for sampling (default: parent-based, always
//! on), `OTEL_BSP_SCHEDULE_DELAY` for the export interval. W3C trace context (`traceparent`)
//! crosses every hop: gRPC metadata between services ([`inject`], [`TraceLayer`]) and the
//! job itself ([`current_context`] → stored with the run → [`set_parent`] on the worker), so
//! a step that runs minutes later on another machine still joins the trace of its `StartRun`.

use std::{collections::HashMap, io::IsTerminal};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::codegen::http;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// Keeps the trace exporter alive; dropping it flushes the spans not yet exported.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// Whether the environment asks for trace export.
fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// Installs the global subscriber (logs, and traces when configured) with `service_name` as
/// the traces' `service.name` (`OTEL_SERVICE_NAME` wins when set). Must run inside the tokio
/// runtime (the exporter is a tonic client). Later calls install nothing: tests and
/// `aura up` may both call it.
pub fn init(service_name: &str) -> Telemetry {
    let filter = std::env::var("AURA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|err| {
        eprintln!("invalid AURA_LOG/RUST_LOG filter {filter:?} ({err}); using \"info\"");
        EnvFilter::new("info")
    });
    let mut provider = None;
    let traces = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string());
                let p = SdkTracerProvider::builder()
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(name).build())
                    .with_batch_exporter(exporter)
                    .build();
                let layer = tracing_opentelemetry::layer().with_tracer(p.tracer("aura"));
                provider = Some(p);
                Some(layer)
            }
            Err(err) => {
                eprintln!("OTLP trace export is configured but cannot start: {err}; traces are off");
                None
            }
        }
    } else {
        None
    };
    let logs = if std::io::stderr().is_terminal() {
        fmt::layer().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    };
    let installed = tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init().is_ok();
    // An error only means a subscriber was already installed: then this one would never see
    // a span, so don't keep an exporter for it.
    Telemetry { provider: if installed { provider } else { None } }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Makes `span` a child of the remote span named by `traceparent` in `headers` (a caller's
/// call), and records its trace id on it so every log line inside carries `trace_id`.
pub fn set_parent_from_headers(span: &Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Makes `span` a child of the span named in `carrier` (a trace context stored in a job).
pub fn set_parent(span: &Span, carrier: &HashMap<String, String>) {
    if !carrier.is_empty() {
        let parent = TraceContextPropagator::new().extract(carrier);
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

fn record_trace_id(span: &Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// The current span's trace context (`traceparent`, `tracestate`): empty when traces are
/// off, so nothing is stored or sent for them.
pub fn current_context() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let context = Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
    }
    carrier
}

/// Puts the current span's trace context into an outgoing call's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Metadata(metadata));
    }
}

/// A server span per gRPC call, child of the caller's `traceparent` when it sent one.
/// Health checks and reflection are left out: probes would bury the traces that matter.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

/// The service [`TraceLayer`] wraps around a server.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        if service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.") {
            return Box::pin(self.inner.call(req));
        }
        let span = tracing::info_span!(
            "grpc",
            otel.name = %path,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            tenant = tracing::field::Empty,
        );
        set_parent_from_headers(&span, req.headers());
        // The handler may do work before its future is first polled: enter for that too.
        let future = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let result = future.await;
                if let Ok(resp) = &result {
                    let code = crate::grpc::head_status(resp.headers()).unwrap_or(0);
                    let span = Span::current();
                    span.record("rpc.grpc.status_code", code);
                    if code != 0 {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}
