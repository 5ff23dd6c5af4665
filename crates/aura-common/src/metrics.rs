//! The Prometheus `/metrics` endpoint: a tiny HTTP/1 server over a shared registry.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};

use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

/// A registry shared by the code that registers series and the endpoint that renders them.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// A new registry with AURA's prefix.
pub fn registry() -> SharedRegistry {
    Arc::new(Mutex::new(Registry::with_prefix("aura")))
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, registry: SharedRegistry, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%err, "metrics listener accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, registry: &SharedRegistry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return Response::builder().status(404).body(Full::new(Bytes::from_static(b"not found\n"))).unwrap();
    }
    let mut body = String::new();
    let registry = registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if encode(&mut body, &registry).is_err() {
        return Response::builder()
            .status(500)
            .body(Full::new(Bytes::from_static(b"encode failed\n")))
            .unwrap();
    }
    Response::builder()
        .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Labels of one gRPC method's calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Fully-qualified service, e.g. `aura.v1.Gateway`.
    pub service: String,
    /// Method, e.g. `StartRun`.
    pub method: String,
    /// gRPC status code name of the response head (`OK` when the head carries none: a
    /// stream that later ends with an error is counted OK here).
    pub code: String,
}

/// Labels of one gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// Service.
    pub service: String,
    /// Method.
    pub method: String,
}

/// Counts and times every gRPC call a server answers.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl GrpcMetricsLayer {
    /// Registers `grpc_server_calls_total` and `grpc_server_call_duration_seconds`.
    pub fn new(registry: &SharedRegistry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let latency =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        r.register("grpc_server_calls", "gRPC calls answered, by method and status code", calls.clone());
        r.register(
            "grpc_server_call_duration_seconds",
            "Time to the response head of gRPC calls (the whole call when unary)",
            latency.clone(),
        );
        GrpcMetricsLayer { calls, latency }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, layer: self.clone() }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let method = MethodLabels { service: service.to_string(), method: method.to_string() };
        let layer = self.layer.clone();
        let started = std::time::Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(resp) => crate::grpc::head_status(resp.headers())
                    .map_or("OK".to_string(), |c| format!("{:?}", tonic::Code::from_i32(c))),
                Err(_) => "TransportError".to_string(),
            };
            layer.latency.get_or_create(&method).observe(started.elapsed().as_secs_f64());
            layer
                .calls
                .get_or_create(&CallLabels { service: method.service, method: method.method, code })
                .inc();
            result
        })
    }
}
