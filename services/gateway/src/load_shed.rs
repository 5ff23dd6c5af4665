//! Load shedding: at most `max` Gateway calls in flight; the next one is answered
//! UNAVAILABLE at once instead of queueing behind them, so an overloaded gateway fails fast
//! and clients back off (or their balancer picks another replica). A permit is held until
//! the response head is ready: a stream (`Subscribe`, `WatchRun`) stops counting once it
//! has started. Health and reflection are never shed.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Status, body::Body, codegen::http};

/// See the module docs.
#[derive(Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl LoadShedLayer {
    /// At most `max` calls under `/aura.v1.Gateway/` at once.
    pub fn new(max: usize) -> Self {
        LoadShedLayer { permits: Arc::new(Semaphore::new(max)), max }
    }
}

impl<S> tower::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, layer: self.clone() }
    }
}

/// See [`LoadShedLayer`].
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for LoadShed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !req.uri().path().starts_with(crate::GATEWAY_PATHS) {
            return Box::pin(self.inner.call(req));
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            let status = Status::unavailable(format!(
                "gateway overloaded: {} calls in flight (--max-in-flight); retry with backoff",
                self.layer.max
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await;
            drop(permit);
            response
        })
    }
}
