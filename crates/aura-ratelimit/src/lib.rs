//! Global rate limits for the Gateway: a tower layer that asks Redis for a token-bucket
//! decision (one Lua script, GCRA: one key per bucket, Redis's clock), so every gateway
//! replica shares the same buckets and two replicas with a limit of R admit R, not 2R.
//!
//! # Layout
//! - `limiter.rs`: [`RateLimiter`], the decision — Redis first (concurrent calls of a bucket
//!   in one script call; a busy bucket leases tokens ahead and spends them in process); when Redis is unreachable,
//!   either an in-process limiter with the same quota (fail open to local limits, the
//!   default) or UNAVAILABLE (fail closed). Buckets are a tenant's method group, or an
//!   Envoy descriptor (the Gateway serves Envoy's rate limit service from the same limiter).
//! - `layer.rs`: [`RateLimitLayer`], the tower layer. Denied calls get RESOURCE_EXHAUSTED
//!   with a `retry-after` header and `google.rpc.RetryInfo`; allowed ones carry
//!   `x-ratelimit-limit` and `x-ratelimit-remaining`. [`first_tier`]: tower-governor in
//!   front, per process, at twice the quota: it sheds floods that could never pass the
//!   global limit before they cost a Redis round trip.
//! - `quota.rs`: [`Limit`] (rps/burst, as configured), [`Quota`] (what a bucket applies),
//!   per-method-group limits.
//! - `lua/gcra.lua`: the decision script.
//!
//! Limits of a tenant's group, most specific first: an override in Redis
//! (`<prefix>:{rl}:limits`, field `<tenant>:<group>` or `<tenant>`, value `rps,burst`,
//! re-read every second, so a change needs no restart), the group's configured limit, the
//! default.
#![forbid(unsafe_code)]

mod error;
mod layer;
mod limiter;
mod quota;

pub use error::ConfigError;
pub use layer::{
    FirstTier, KeyFn, OnlyUnder, OnlyUnderService, RateLimitLayer, RateLimitService, TenantKey, first_tier,
};
pub use limiter::{Bucket, Decision, FailMode, GCRA_SOURCE, RateLimiter};
pub use quota::{Limit, Quota, parse_group_limits, parse_method_costs};
