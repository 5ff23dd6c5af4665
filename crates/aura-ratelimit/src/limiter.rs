//! The decision: a GCRA script on Redis (one call per batch of concurrent requests of a
//! bucket, plus tokens leased ahead for a busy bucket's next requests), an in-process
//! limiter when Redis is away.

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use aura_common::redis::RedisConn;
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota};
use redis::Script;
use tokio::sync::oneshot;

use crate::quota::{Limit, Quota, parse_override};

/// Most decisions of one bucket per script call (Lua's unpack limit is far above).
const MAX_BATCH: usize = 1000;

/// How long a decision may wait for Redis before falling back.
const REDIS_BUDGET: Duration = Duration::from_millis(250);

/// How long a per-tenant override read from Redis is trusted.
const OVERRIDE_TTL: Duration = Duration::from_secs(1);

/// Most tokens one lease takes ahead (see [`Lease`]).
const MAX_LEASE: u32 = 256;

/// How long leased tokens may be spent; what is left then is dropped (taken from the
/// bucket, never used). Short, so a bucket whose traffic stops loses little.
const LEASE_TTL: Duration = Duration::from_millis(100);

/// Leases kept before expired ones are swept (one per busy bucket).
const LEASE_SWEEP_AT: usize = 1024;

/// The decision script's source (benchmarks load it to compare with `redis-benchmark`).
pub const GCRA_SOURCE: &str = include_str!("lua/gcra.lua");

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_SOURCE));

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
        /// Until the bucket is full again (zero when the in-process fallback decided).
        reset_after: Duration,
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

/// Which bucket a call spends from.
#[derive(Clone, Copy, Debug)]
pub enum Bucket<'a> {
    /// A tenant's method group: the gateway's own buckets, with per-tenant overrides.
    Tenant {
        /// The tenant.
        tenant: &'a str,
        /// The method group (`default`, `tasks`).
        group: &'a str,
    },
    /// An Envoy rate-limit descriptor: a domain and its `(key, value)` entries.
    Descriptor {
        /// The descriptor's domain.
        domain: &'a str,
        /// Its entries, in order.
        entries: &'a [(String, String)],
    },
}

/// Escapes the separators of a descriptor key, so `a=b,c` as one value and `a=b` + `c` as
/// two entries cannot share a bucket.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | ':' | '=' | ',' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Decides calls against buckets in Redis.
pub struct RateLimiter {
    conn: RedisConn,
    prefix: String,
    /// Of every tenant and group without a more specific limit.
    default: Limit,
    /// Per method group, from configuration (`--rate-limit-group`).
    groups: BTreeMap<String, Limit>,
    fail: FailMode,
    /// `tenant:group` → the Redis override found (if any), and when it was read.
    overrides: Mutex<HashMap<String, (Option<Limit>, Instant)>>,
    /// In-process buckets used while Redis is away, one keyed limiter per quota.
    local: Mutex<HashMap<Quota, Arc<DefaultKeyedRateLimiter<String>>>>,
    /// Set when Redis failed: until then, decide locally without trying Redis (a
    /// reconnecting Redis must not add latency to every call).
    redis_down_until: Mutex<Option<Instant>>,
    /// Requests waiting for a bucket's decision call in flight (see `decide`).
    batches: Arc<Batches>,
    /// Tokens leased ahead per bucket and quota (see [`Lease`]).
    leases: Arc<Mutex<HashMap<(String, Quota), Lease>>>,
    /// Decisions made by the script on Redis, and from leased tokens (for benchmarks).
    decided: Arc<DecisionCounts>,
}

/// Decisions by where they were made.
#[derive(Default)]
struct DecisionCounts {
    redis: std::sync::atomic::AtomicU64,
    leased: std::sync::atomic::AtomicU64,
}

/// Tokens a busy bucket took from Redis ahead of its next requests. Under load a Redis
/// round trip waits behind whatever else Redis runs (the queue's batch scripts: milliseconds),
/// and every limited call would wait for one. So a decision call that finds demand (calls
/// queued behind the previous one, or leased tokens spent since) also takes that many
/// tokens more, and the next calls spend them here without a round trip, in order.
/// Leased tokens are already taken from the global bucket, so replicas together still
/// admit the limit once; near an empty bucket the script grants no lease (it needs twice
/// the lease left) and every call is decided on Redis, one by one, as before.
struct Lease {
    /// Tokens left to spend.
    tokens: u32,
    /// The bucket's remaining tokens after the lease was taken: a call spending a leased
    /// token reports `remaining = left + tokens still leased`, as if decided on Redis.
    left: u32,
    /// Until the bucket is full, as of the lease.
    reset_after: Duration,
    /// Tokens spent from it: the demand the next decision call leases for.
    spent: u32,
    expires: Instant,
}

impl Lease {
    /// Spends `cost` tokens, if they are leased and the lease is current: the decision.
    fn spend(&mut self, cost: u32, limit: u32, now: Instant) -> Option<Decision> {
        if now >= self.expires || self.tokens < cost {
            return None;
        }
        self.tokens -= cost;
        self.spent = self.spent.saturating_add(cost);
        let remaining = self.left.saturating_add(self.tokens);
        Some(Decision::Allow { limit, remaining, reset_after: self.reset_after })
    }
}

/// Per bucket and quota: the requests (cost, answer) waiting for a decision call.
type Batches = aura_common::group::Pending<(String, Quota), (u32, oneshot::Sender<Result<Decision, String>>)>;

impl RateLimiter {
    /// A limiter with `default` per tenant and group, and `fail` while Redis is away.
    pub fn new(conn: RedisConn, prefix: &str, default: Limit, fail: FailMode) -> Self {
        RateLimiter {
            conn,
            prefix: prefix.to_string(),
            default,
            groups: BTreeMap::new(),
            fail,
            overrides: Mutex::default(),
            local: Mutex::default(),
            redis_down_until: Mutex::default(),
            batches: Arc::default(),
            leases: Arc::default(),
            decided: Arc::default(),
        }
    }

    /// Decisions made so far by the script on Redis, and from leased tokens.
    pub fn decision_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.decided.redis.load(Relaxed), self.decided.leased.load(Relaxed))
    }

    /// Per-method-group limits that replace the default for their group.
    pub fn with_group_limits(mut self, groups: BTreeMap<String, Limit>) -> Self {
        self.groups = groups;
        self
    }

    /// The key holding per-tenant overrides: field `<tenant>` (every group) or
    /// `<tenant>:<group>`, value `rps,burst`.
    pub fn overrides_key(&self) -> String {
        format!("{}:{{rl}}:limits", self.prefix)
    }

    /// Precedence: the tenant's override for the group, the tenant's override, the group's
    /// configured limit, the default.
    fn resolve(&self, over: Option<Limit>, group: &str) -> Limit {
        over.or_else(|| self.groups.get(group).copied()).unwrap_or(self.default)
    }

    fn cached_override(&self, field: &str) -> Option<(Option<Limit>, Instant)> {
        self.overrides.lock().unwrap_or_else(|p| p.into_inner()).get(field).copied()
    }

    /// The limit of a tenant's group, reading overrides from Redis at most once a second.
    async fn limit_for(&self, tenant: &str, group: &str) -> Limit {
        let field = format!("{tenant}:{group}");
        if let Some((over, at)) = self.cached_override(&field)
            && at.elapsed() < OVERRIDE_TTL
        {
            return self.resolve(over, group);
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.overrides_key()).arg(&field).arg(tenant);
        let lookup = cmd.query_async::<Vec<Option<String>>>(&mut conn);
        let Ok(Ok(found)) = tokio::time::timeout(REDIS_BUDGET, lookup).await else {
            return self.resolve(None, group);
        };
        let over = found.iter().flatten().find_map(|s| parse_override(s));
        self.overrides.lock().unwrap_or_else(|p| p.into_inner()).insert(field, (over, Instant::now()));
        self.resolve(over, group)
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

    /// Decides one call of `cost` tokens for `tenant` in method group `group`.
    pub async fn check(&self, tenant: &str, group: &str, cost: u32) -> Decision {
        self.check_bucket(Bucket::Tenant { tenant, group }, None, cost).await.1
    }

    /// Decides `cost` tokens from `bucket`, under `quota` when given (an Envoy descriptor's
    /// own limit), else under the bucket's configured limit. Returns the quota applied.
    pub async fn check_bucket(
        &self,
        bucket: Bucket<'_>,
        quota: Option<Quota>,
        cost: u32,
    ) -> (Quota, Decision) {
        let down = self.redis_is_down();
        let (key, quota) = match bucket {
            Bucket::Tenant { tenant, group } => {
                let quota = match quota {
                    Some(quota) => quota,
                    // Redis is away: the last override seen, without waiting for Redis.
                    None if down => {
                        let over = self.cached_override(&format!("{tenant}:{group}")).and_then(|(l, _)| l);
                        self.resolve(over, group).into()
                    }
                    None => self.limit_for(tenant, group).await.into(),
                };
                (format!("{}:{{rl}}:b:{tenant}:{group}", self.prefix), quota)
            }
            Bucket::Descriptor { domain, entries } => {
                let entries: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{}={}", escape(k), escape(v))).collect();
                let key = format!("{}:{{rl}}:d:{}:{}", self.prefix, escape(domain), entries.join(","));
                (key, quota.unwrap_or_else(|| self.default.into()))
            }
        };
        if down {
            return (quota, self.fallback(&key, quota, cost));
        }
        (quota, self.decide(&key, quota, cost).await)
    }

    /// Decides on Redis. Concurrent requests of one bucket share calls (group commit):
    /// the first goes at once, those arriving while it is in flight go together next, each
    /// decided in order by the same script. A tenant's burst of calls then costs Redis one
    /// round trip per batch instead of one per call, and an idle bucket waits for nothing.
    /// A busy bucket's calls first spend the tokens leased ahead (see [`Lease`]), with no
    /// call at all.
    async fn decide(&self, key: &str, quota: Quota, cost: u32) -> Decision {
        let slot = (key.to_string(), quota);
        let leased = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            leases.get_mut(&slot).and_then(|lease| lease.spend(cost, quota.burst, Instant::now()))
        };
        if let Some(decision) = leased {
            self.decided.leased.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return decision;
        }
        let (tx, rx) = oneshot::channel();
        if self.batches.push(&slot, (cost, tx)) {
            // Spawned, so a caller that gives up cannot strand the others' decisions.
            let drain = Drain {
                conn: self.conn.clone(),
                batches: self.batches.clone(),
                leases: self.leases.clone(),
                decided: self.decided.clone(),
            };
            tokio::spawn(drain.run(slot));
        }
        // The drain answers within its budget, or with why Redis could not decide.
        match rx.await.unwrap_or_else(|_| Err("the decision call was dropped".to_string())) {
            Ok(decision) => decision,
            Err(err) => {
                tracing::warn!(%err, "rate limiter cannot reach redis; deciding locally for a second");
                *self.redis_down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + Duration::from_secs(1));
                self.fallback(key, quota, cost)
            }
        }
    }

    fn fallback(&self, key: &str, quota: Quota, cost: u32) -> Decision {
        match self.fail {
            FailMode::Closed => Decision::Unavailable,
            FailMode::OpenToLocal => self.check_local(key, quota, cost),
        }
    }

    fn check_local(&self, key: &str, quota: Quota, cost: u32) -> Decision {
        let limiter = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(quota)
            .or_insert_with(|| {
                let period = quota.interval().max(Duration::from_nanos(1));
                let local = GovernorQuota::with_period(period)
                    .expect("a non-zero period")
                    .allow_burst(NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN));
                Arc::new(DefaultKeyedRateLimiter::keyed(local))
            })
            .clone();
        let cost = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&key.to_string(), cost) {
            Ok(Ok(())) => Decision::Allow { limit: quota.burst, remaining: 0, reset_after: Duration::ZERO },
            Ok(Err(not_until)) => Decision::Deny {
                limit: quota.burst,
                retry_after: not_until
                    .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default())),
            },
            // More than the bucket holds: never, as on Redis; say "a full unit".
            Err(_) => Decision::Deny { limit: quota.burst, retry_after: quota.per },
        }
    }
}

/// What a bucket's drain task needs of the limiter.
struct Drain {
    conn: RedisConn,
    batches: Arc<Batches>,
    leases: Arc<Mutex<HashMap<(String, Quota), Lease>>>,
    decided: Arc<DecisionCounts>,
}

impl Drain {
    /// Runs a bucket's waiting requests, a call's worth at a time, until none wait: first
    /// from the bucket's lease while it lasts (requests that queued while the lease was
    /// being taken), the rest in one script call that also leases the demand seen.
    async fn run(self, slot: (String, Quota)) {
        use std::sync::atomic::Ordering::Relaxed;
        let quota = slot.1;
        let interval_us = quota.per.as_secs_f64() * 1e6 / f64::from(quota.requests.max(1));
        loop {
            let mut batch = self.batches.take(&slot, MAX_BATCH);
            if batch.is_empty() {
                return;
            }
            // Spend what is leased, in arrival order; the demand since the last call (leased
            // tokens spent, plus this batch) is what the next lease asks for.
            // An expired lease says nothing of the demand now: it is dropped.
            let mut demand = 0u32;
            let mut from_lease = Vec::new();
            {
                let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match leases.get_mut(&slot) {
                    Some(lease) if now < lease.expires => {
                        for (cost, _) in &batch {
                            let Some(decision) = lease.spend(*cost, quota.burst, now) else { break };
                            from_lease.push(decision);
                        }
                        demand = lease.spent;
                    }
                    Some(_) => {
                        leases.remove(&slot);
                    }
                    None => {}
                }
            }
            self.decided.leased.fetch_add(from_lease.len() as u64, Relaxed);
            for ((_, reply), decision) in batch.drain(..from_lease.len()).zip(from_lease) {
                let _ = reply.send(Ok(decision));
            }
            if batch.is_empty() {
                continue;
            }
            let batch_cost: u32 = batch.iter().map(|(c, _)| *c).sum();
            demand = demand.saturating_add(batch_cost);
            // A lone call with nothing spent before it leases nothing: a caller that sends
            // one call at a time gets exact decisions and wastes no tokens.
            let want = if demand >= 2 { demand.min(MAX_LEASE) } else { 0 };
            let mut invocation = GCRA.key(&slot.0);
            invocation.arg(interval_us).arg(quota.burst).arg(want);
            for (cost, _) in &batch {
                invocation.arg(*cost);
            }
            let mut conn = self.conn.clone();
            let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
            // A limiter must not make calls wait for a reconnecting Redis: past the budget it
            // decides without Redis.
            let replies = match tokio::time::timeout(REDIS_BUDGET, call).await {
                Ok(Ok(flat)) if flat.len() == 4 * batch.len() + 3 => Ok(flat),
                Ok(Ok(flat)) => Err(format!("{} values for {} decisions", flat.len(), batch.len())),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("no answer within the limiter's budget".to_string()),
            };
            let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
            if let Ok(f) = &replies {
                let tail = 4 * batch.len();
                let leased = f[tail].clamp(0, i64::from(u32::MAX)) as u32;
                let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                if leased > 0 {
                    let now = Instant::now();
                    if leases.len() >= LEASE_SWEEP_AT {
                        leases.retain(|_, lease| lease.expires > now);
                    }
                    let lease = Lease {
                        tokens: leased,
                        left: f[tail + 1].clamp(0, i64::from(u32::MAX)) as u32,
                        reset_after: micros(f[tail + 2]),
                        spent: 0,
                        expires: now + LEASE_TTL,
                    };
                    leases.insert(slot.clone(), lease);
                } else {
                    leases.remove(&slot);
                }
            }
            self.decided.redis.fetch_add(batch.len() as u64, Relaxed);
            for (i, (_, reply)) in batch.into_iter().enumerate() {
                let decided = match &replies {
                    Ok(f) if f[4 * i] == 1 => Ok(Decision::Allow {
                        limit: quota.burst,
                        remaining: f[4 * i + 1].clamp(0, i64::from(u32::MAX)) as u32,
                        reset_after: micros(f[4 * i + 3]),
                    }),
                    Ok(f) => Ok(Decision::Deny { limit: quota.burst, retry_after: micros(f[4 * i + 2]) }),
                    Err(err) => Err(err.clone()),
                };
                let _ = reply.send(decided);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn descriptor_separators_are_escaped() {
        assert_eq!(escape("a=b,c:d%"), "a%3Db%2Cc%3Ad%25");
        assert_eq!(escape("plain/path"), "plain/path");
    }
}
