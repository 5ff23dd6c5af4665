//! The Prometheus `/metrics` endpoint: a tiny HTTP/1 server over a shared registry.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
