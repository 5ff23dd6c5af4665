//! The tower layers: the global limit ([`RateLimitLayer`]) and the in-process first tier
//! ([`first_tier`]), both limited to the paths of one service.

use std::sync::Arc;

use tonic::{Status, body::Body, codegen::http};

use crate::{Decision, Limit, RateLimiter};

/// Who a call counts against: (tenant, method group).
pub type KeyFn = Arc<dyn Fn(&http::Extensions, &str) -> (String, &'static str) + Send + Sync>;

/// Labels of the decision counter: method group and outcome (tenants are left out: their
/// number is unbounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DecisionLabels {
    group: &'static str,
    decision: &'static str,
}

type Decisions =
    prometheus_client::metrics::family::Family<DecisionLabels, prometheus_client::metrics::counter::Counter>;

/// The global limit as a tower layer (see the crate docs).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    key: KeyFn,
    /// Only paths with this prefix are limited (health, reflection and Envoy's rate limit
    /// service are not).
    path_prefix: &'static str,
    decisions: Decisions,
    /// Tokens per call, by method name (the last path segment); 1 when absent.
    costs: Arc<std::collections::BTreeMap<String, u32>>,
}

impl RateLimitLayer {
    /// Limits calls under `path_prefix`, keyed by `key`.
    pub fn new(limiter: Arc<RateLimiter>, key: KeyFn, path_prefix: &'static str) -> Self {
        RateLimitLayer { limiter, key, path_prefix, decisions: Decisions::default(), costs: Arc::default() }
    }

    /// Tokens one call of each method takes (methods not named take 1): a batch call such as
    /// `StartRuns` can be priced above a single `GetRun`.
    pub fn with_costs(mut self, costs: std::collections::BTreeMap<String, u32>) -> Self {
        self.costs = Arc::new(costs);
        self
    }

    /// Counts decisions as `ratelimit_decisions_total{group, decision}` in `registry`.
    pub fn with_metrics(self, registry: &aura_common::metrics::SharedRegistry) -> Self {
        registry.lock().unwrap_or_else(|p| p.into_inner()).register(
            "ratelimit_decisions",
            "Global rate-limit decisions by method group: allowed, denied, unavailable (fail-closed)",
            self.decisions.clone(),
        );
        self
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, layer: self.clone() }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    layer: RateLimitLayer,
}

fn header(v: impl ToString) -> http::HeaderValue {
    http::HeaderValue::from_str(&v.to_string()).unwrap_or(http::HeaderValue::from_static("0"))
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RateLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !req.uri().path().starts_with(self.layer.path_prefix) {
            return Box::pin(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (tenant, group) = (layer.key)(req.extensions(), req.uri().path());
            let method = req.uri().path().rsplit('/').next().unwrap_or_default();
            let cost = layer.costs.get(method).copied().unwrap_or(1);
            let decision = layer.limiter.check(&tenant, group, cost).await;
            let outcome = match decision {
                Decision::Allow { .. } => "allowed",
                Decision::Deny { .. } => "denied",
                Decision::Unavailable => "unavailable",
            };
            layer.decisions.get_or_create(&DecisionLabels { group, decision: outcome }).inc();
            match decision {
                Decision::Allow { limit, remaining, .. } => {
                    let mut resp = inner.call(req).await?;
                    resp.headers_mut().insert("x-ratelimit-limit", header(limit));
                    resp.headers_mut().insert("x-ratelimit-remaining", header(remaining));
                    Ok(resp)
                }
                Decision::Deny { limit, retry_after } => {
                    let status = aura_common::status::resource_exhausted(
                        format!(
                            "rate limit of tenant {tenant:?} ({group}) exceeded; retry after {retry_after:?}"
                        ),
                        retry_after,
                    );
                    let mut resp = status.into_http::<Body>();
                    resp.headers_mut().insert("x-ratelimit-limit", header(limit));
                    resp.headers_mut().insert("x-ratelimit-remaining", header(0));
                    Ok(resp)
                }
                Decision::Unavailable => Ok(Status::unavailable(
                    "rate limiter unavailable (redis unreachable, fail-closed); retry with backoff",
                )
                .into_http()),
            }
        })
    }
}

/// Reads the tenant a call counts against from the request extensions, for tower-governor.
#[derive(Clone)]
pub struct TenantKey(pub KeyFn);

impl tower_governor::key_extractor::KeyExtractor for TenantKey {
    type Key = String;
    fn extract<T>(&self, req: &http::Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        let (tenant, group) = (self.0)(req.extensions(), req.uri().path());
        Ok(format!("{tenant}:{group}"))
    }
}

/// The first tier's layer: tower-governor, applied only under a path prefix.
pub type FirstTier =
    OnlyUnder<tower_governor::GovernorLayer<TenantKey, governor::middleware::NoOpMiddleware, Body>>;

/// The in-process first tier: tower-governor at twice `limit` per tenant and group, for
/// calls under `path_prefix` only (health checks and Envoy's rate limit calls are not the
/// tenants' traffic). Give it the largest limit any group has, or it sheds calls the
/// global limit would admit.
pub fn first_tier(limit: Limit, key: KeyFn, path_prefix: &'static str) -> FirstTier {
    // One token every 1/(2 × rps) seconds.
    let period_ns = (500_000_000 / u64::from(limit.rps.max(1))).max(1);
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(period_ns)
        .burst_size(limit.burst.saturating_mul(2).max(1))
        .key_extractor(TenantKey(key))
        .finish()
        .expect("a valid governor quota");
    OnlyUnder { layer: tower_governor::GovernorLayer::new(config), path_prefix }
}

/// Applies `layer` to the calls under `path_prefix`; the others go straight to the inner
/// service.
#[derive(Clone)]
pub struct OnlyUnder<L> {
    layer: L,
    path_prefix: &'static str,
}

impl<S: Clone, L: tower::Layer<S>> tower::Layer<S> for OnlyUnder<L> {
    type Service = OnlyUnderService<S, L::Service>;
    fn layer(&self, inner: S) -> Self::Service {
        OnlyUnderService {
            plain: inner.clone(),
            layered: self.layer.layer(inner),
            path_prefix: self.path_prefix,
        }
    }
}

/// See [`OnlyUnder`].
#[derive(Clone)]
pub struct OnlyUnderService<S, T> {
    plain: S,
    layered: T,
    path_prefix: &'static str,
}

impl<S, T, B> tower::Service<http::Request<B>> for OnlyUnderService<S, T>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    T: tower::Service<http::Request<B>, Response = S::Response, Error = S::Error>,
    T::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Either may serve the next call, so both must be ready.
        std::task::ready!(self.plain.poll_ready(cx))?;
        self.layered.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with(self.path_prefix) {
            Box::pin(self.layered.call(req))
        } else {
            Box::pin(self.plain.call(req))
        }
    }
}
