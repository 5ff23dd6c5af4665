//! Global rate limits for the Gateway: a tower layer that asks Redis for a token-bucket
//! decision (one Lua script, GCRA: one key per bucket, Redis's clock), so every gateway
//! replica shares the same buckets and two replicas with a limit of R admit R, not 2R.
//!
//! # Layout
//! - [`RateLimiter`]: the decision — Redis first; when Redis is unreachable, either an
//!   in-process limiter with the same quota (fail open to local limits, the default) or
//!   UNAVAILABLE (fail closed).
//! - [`RateLimitLayer`]: the tower layer. Denied calls get RESOURCE_EXHAUSTED with a
//!   `retry-after` header and `google.rpc.RetryInfo`; allowed ones carry
//!   `x-ratelimit-limit` and `x-ratelimit-remaining`.
//! - [`first_tier`]: tower-governor in front, per process, at twice the quota: it sheds
//!   floods that could never pass the global limit before they cost a Redis round trip.
//!
//! Limits: a default per tenant, overridable per tenant in Redis (`<prefix>:{rl}:limits`,
//! field = tenant, value = `rps,burst`), re-read every second, so a change needs no restart.
#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use aura_common::redis::RedisConn;
use governor::{DefaultKeyedRateLimiter, Quota};
use redis::{AsyncCommands, Script};
use tonic::{Status, body::Body, codegen::http};

/// How long a decision may wait for Redis before falling back.
const REDIS_BUDGET: Duration = Duration::from_millis(250);

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));

/// A quota: `rps` tokens per second, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Sustained rate, per second (> 0).
    pub rps: u32,
    /// Bucket capacity (> 0).
    pub burst: u32,
}

/// What to do while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Apply the same quota per gateway process (a cluster of N gateways then admits up to
    /// N times the limit until Redis is back).
    OpenToLocal,
    /// Refuse calls with UNAVAILABLE.
    Closed,
}

/// A decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Go on; `remaining` calls are left in the bucket.
    Allow {
        /// The bucket's capacity.
        limit: u32,
        /// Tokens left.
        remaining: u32,
    },
    /// Refused; retry after this long.
    Deny {
        /// The bucket's capacity.
        limit: u32,
        /// When a token will be there.
        retry_after: Duration,
    },
    /// Redis is away and the mode is fail-closed.
    Unavailable,
}

/// Decides calls against per-tenant, per-group buckets in Redis.
pub struct RateLimiter {
    conn: RedisConn,
    prefix: String,
    default: Limit,
    fail: FailMode,
    overrides: Mutex<HashMap<String, (Option<Limit>, Instant)>>,
    local: Mutex<HashMap<Limit, Arc<DefaultKeyedRateLimiter<String>>>>,
    /// Set when Redis failed: until then, decide locally without trying Redis (a
    /// reconnecting Redis must not add latency to every call).
    redis_down_until: Mutex<Option<Instant>>,
}

impl std::hash::Hash for Limit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.rps, self.burst).hash(state);
    }
}

impl Eq for Limit {}

fn parse_limit(s: &str) -> Option<Limit> {
    let (rps, burst) = s.split_once(',')?;
    let limit = Limit { rps: rps.trim().parse().ok()?, burst: burst.trim().parse().ok()? };
    (limit.rps > 0 && limit.burst > 0).then_some(limit)
}

impl RateLimiter {
    /// A limiter with `default` per tenant and `fail` while Redis is away.
    pub fn new(conn: RedisConn, prefix: &str, default: Limit, fail: FailMode) -> Self {
        RateLimiter {
            conn,
            prefix: prefix.to_string(),
            default,
            fail,
            overrides: Mutex::default(),
            local: Mutex::default(),
            redis_down_until: Mutex::default(),
        }
    }

    /// The key holding per-tenant overrides.
    pub fn overrides_key(&self) -> String {
        format!("{}:{{rl}}:limits", self.prefix)
    }

    async fn limit_for(&self, tenant: &str) -> Limit {
        if let Some((limit, at)) = self.overrides.lock().unwrap_or_else(|p| p.into_inner()).get(tenant)
            && at.elapsed() < Duration::from_secs(1)
        {
            return limit.unwrap_or(self.default);
        }
        let mut conn = self.conn.clone();
        let lookup = conn.hget::<_, _, Option<String>>(self.overrides_key(), tenant);
        let Ok(Ok(found)) = tokio::time::timeout(REDIS_BUDGET, lookup).await else {
            return self.default;
        };
        let limit = found.as_deref().and_then(parse_limit);
        self.overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string(), (limit, Instant::now()));
        limit.unwrap_or(self.default)
    }

    fn redis_is_down(&self) -> bool {
        let mut down = self.redis_down_until.lock().unwrap_or_else(|p| p.into_inner());
        match *down {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *down = None;
                false
            }
            None => false,
        }
    }

    fn fallback(&self, tenant: &str, group: &str, limit: Limit) -> Decision {
        match self.fail {
            FailMode::Closed => Decision::Unavailable,
            FailMode::OpenToLocal => self.check_local(tenant, group, limit),
        }
    }

    /// Decides one call of `cost` tokens for `tenant` in method group `group`.
    pub async fn check(&self, tenant: &str, group: &str, cost: u32) -> Decision {
        if self.redis_is_down() {
            let limit =
                self.overrides.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).and_then(|(l, _)| *l);
            return self.fallback(tenant, group, limit.unwrap_or(self.default));
        }
        let limit = self.limit_for(tenant).await;
        let interval_us = 1_000_000.0 / f64::from(limit.rps);
        let mut conn = self.conn.clone();
        let mut invocation = GCRA.key(format!("{}:{{rl}}:b:{tenant}:{group}", self.prefix));
        invocation.arg(interval_us).arg(limit.burst).arg(cost);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut conn);
        // A limiter must not make calls wait for a reconnecting Redis: past the budget it
        // decides without Redis.
        let reply = match tokio::time::timeout(REDIS_BUDGET, call).await {
            Ok(reply) => reply.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within the limiter's budget".to_string()),
        };
        match reply {
            Ok((1, remaining, _)) => {
                Decision::Allow { limit: limit.burst, remaining: remaining.max(0) as u32 }
            }
            Ok((_, _, retry_us)) => Decision::Deny {
                limit: limit.burst,
                retry_after: Duration::from_micros(retry_us.max(0) as u64),
            },
            Err(err) => {
                tracing::warn!(%err, "rate limiter cannot reach redis; deciding locally for a second");
                *self.redis_down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + Duration::from_secs(1));
                self.fallback(tenant, group, limit)
            }
        }
    }

    fn check_local(&self, tenant: &str, group: &str, limit: Limit) -> Decision {
        let limiter = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(limit)
            .or_insert_with(|| {
                let quota = Quota::per_second(NonZeroU32::new(limit.rps).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN));
                Arc::new(DefaultKeyedRateLimiter::keyed(quota))
            })
            .clone();
        match limiter.check_key(&format!("{tenant}:{group}")) {
            Ok(()) => Decision::Allow { limit: limit.burst, remaining: 0 },
            Err(not_until) => Decision::Deny {
                limit: limit.burst,
                retry_after: not_until
                    .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default())),
            },
        }
    }
}

/// Who a call counts against: (tenant, method group).
pub type KeyFn = Arc<dyn Fn(&http::Extensions, &str) -> (String, &'static str) + Send + Sync>;

/// The tower layer (see the crate docs).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    key: KeyFn,
    /// Only paths with this prefix are limited (health and reflection are not).
    path_prefix: &'static str,
}

impl RateLimitLayer {
    /// Limits calls under `path_prefix`, keyed by `key`.
    pub fn new(limiter: Arc<RateLimiter>, key: KeyFn, path_prefix: &'static str) -> Self {
        RateLimitLayer { limiter, key, path_prefix }
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

impl<S, B> tower::Service<http::Request<B>> for RateLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

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
            match layer.limiter.check(&tenant, group, 1).await {
                Decision::Allow { limit, remaining } => {
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

/// The in-process first tier: tower-governor at twice `limit` per tenant and group.
pub fn first_tier(
    limit: Limit,
    key: KeyFn,
) -> tower_governor::GovernorLayer<TenantKey, governor::middleware::NoOpMiddleware, Body> {
    // One token every 1/(2 × rps) seconds.
    let period_ns = (500_000_000 / u64::from(limit.rps.max(1))).max(1);
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(period_ns)
        .burst_size(limit.burst.saturating_mul(2).max(1))
        .key_extractor(TenantKey(key))
        .finish()
        .expect("a valid governor quota");
    tower_governor::GovernorLayer::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse() {
        assert_eq!(parse_limit("10, 20"), Some(Limit { rps: 10, burst: 20 }));
        assert_eq!(parse_limit("0,1"), None);
        assert_eq!(parse_limit("x"), None);
    }
}
