//! The limiter's decisions against a real redis-server, including while it is down.

use std::time::Duration;

use aura_ratelimit::{Decision, FailMode, Limit, RateLimiter};
use aura_testkit::{RedisServer, wait_until};

async fn limiter(redis: &RedisServer, limit: Limit, fail: FailMode) -> RateLimiter {
    RateLimiter::new(aura_common::redis::connect(&redis.url()).await.unwrap(), "aura", limit, fail)
}

#[tokio::test]
async fn a_burst_passes_the_next_waits_about_one_interval() {
    let redis = RedisServer::start();
    let l = limiter(&redis, Limit { rps: 4, burst: 5 }, FailMode::Closed).await;
    for i in 0..5 {
        assert!(
            matches!(l.check("acme", "default", 1).await, Decision::Allow { .. }),
            "call {i} of the burst"
        );
    }
    match l.check("acme", "default", 1).await {
        Decision::Deny { limit, retry_after } => {
            assert_eq!(limit, 5);
            assert!(
                retry_after <= Duration::from_millis(250) && retry_after > Duration::ZERO,
                "{retry_after:?}"
            );
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // Another tenant and another group have their own buckets.
    assert!(matches!(l.check("globex", "default", 1).await, Decision::Allow { .. }));
    assert!(matches!(l.check("acme", "tasks", 1).await, Decision::Allow { .. }));
    // After 1/R one more passes.
    wait_until("a token refills", Duration::from_secs(3), || async {
        matches!(l.check("acme", "default", 1).await, Decision::Allow { .. })
    })
    .await;
}

#[tokio::test]
async fn per_tenant_overrides_in_redis_apply_without_restart() {
    let redis = RedisServer::start();
    let l = limiter(&redis, Limit { rps: 1000, burst: 1000 }, FailMode::Closed).await;
    let mut conn = redis.client();
    let () = redis::cmd("HSET").arg(l.overrides_key()).arg("small").arg("1,2").query(&mut conn).unwrap();
    let mut allowed = 0;
    for _ in 0..5 {
        if matches!(l.check("small", "default", 1).await, Decision::Allow { .. }) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 2);
}

#[tokio::test]
async fn redis_outage_falls_back_as_configured_and_recovers() {
    let mut redis = RedisServer::start();
    let open = limiter(&redis, Limit { rps: 1, burst: 3 }, FailMode::OpenToLocal).await;
    let closed = limiter(&redis, Limit { rps: 1, burst: 3 }, FailMode::Closed).await;
    assert!(matches!(open.check("t", "g", 1).await, Decision::Allow { .. }));
    redis.kill();
    // Fail open: the local limiter applies the same quota.
    let mut local = Vec::new();
    for _ in 0..5 {
        local.push(matches!(open.check("t", "g", 1).await, Decision::Allow { .. }));
    }
    // The burst of 3 (one more if a token refilled while the first call found Redis gone).
    let allowed = local.iter().filter(|a| **a).count();
    assert!((3..=4).contains(&allowed), "{local:?}");
    assert_eq!(closed.check("t", "g", 1).await, Decision::Unavailable);
    redis.restart();
    wait_until("redis decisions again", Duration::from_secs(20), || async {
        matches!(closed.check("t2", "g", 1).await, Decision::Allow { .. })
    })
    .await;
}

/// Concurrent requests of one bucket share decision calls; each is still decided on its
/// own: of 200 at once against a burst of 50 (and a refill far slower than the test),
/// exactly 50 pass, and a denied one is told when to retry.
#[tokio::test]
async fn concurrent_requests_of_a_bucket_get_exactly_the_burst() {
    let redis = RedisServer::start();
    let l = std::sync::Arc::new(limiter(&redis, Limit { rps: 1, burst: 50 }, FailMode::Closed).await);
    let calls = (0..200).map(|_| {
        let l = l.clone();
        tokio::spawn(async move { l.check("acme", "default", 1).await })
    });
    let decisions: Vec<Decision> =
        futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let allowed = decisions.iter().filter(|d| matches!(d, Decision::Allow { .. })).count();
    assert_eq!(allowed, 50, "{decisions:?}");
    assert!(decisions.iter().all(|d| match d {
        Decision::Allow { .. } => true,
        Decision::Deny { retry_after, .. } => *retry_after > Duration::ZERO,
        Decision::Unavailable => false,
    }));
    // Remaining counts down over the allowed ones: every value 0..50 once.
    let mut remaining: Vec<u32> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Allow { remaining, .. } => Some(*remaining),
            _ => None,
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..50).collect::<Vec<u32>>());
}

/// A busy bucket spends tokens leased ahead instead of asking Redis for every call, yet two
/// limiters (two gateway replicas) on one Redis still admit what the bucket holds once:
/// leased tokens are taken from the shared bucket. Of 3,000 calls in waves of concurrent
/// calls against a burst of 1,000 (refill far slower than the test), none passes beyond
/// the burst, and at most the leases that ran out unspent are missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_tokens_never_admit_more_than_the_bucket_holds_across_replicas() {
    let redis = RedisServer::start();
    let limit = Limit { rps: 1, burst: 1000 };
    let a = std::sync::Arc::new(limiter(&redis, limit, FailMode::Closed).await);
    let b = std::sync::Arc::new(limiter(&redis, limit, FailMode::Closed).await);
    let started = std::time::Instant::now();
    let mut allowed = 0u32;
    for _wave in 0..15 {
        let calls = (0..200).map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { l.check("acme", "default", 1).await })
        });
        for d in futures::future::join_all(calls).await {
            match d.unwrap() {
                Decision::Allow { .. } => allowed += 1,
                Decision::Deny { retry_after, .. } => assert!(retry_after > Duration::ZERO),
                Decision::Unavailable => panic!("redis is up"),
            }
        }
    }
    let refilled = started.elapsed().as_secs() as u32 + 1;
    assert!(allowed <= 1000 + refilled, "{allowed} calls passed a bucket of 1000");
    // Two leases (one per limiter) of at most 256 tokens may have expired unspent.
    assert!(allowed >= 1000 - 2 * 256, "only {allowed} of 1000 passed");
    // (decided on Redis, spent leased tokens) per limiter
    let (a_counts, b_counts) = (a.decision_counts(), b.decision_counts());
    assert!(a_counts.1 + b_counts.1 > 0, "no call spent a leased token: {a_counts:?} {b_counts:?}");
}

/// One call at a time leases nothing: each is decided on Redis, exactly.
#[tokio::test]
async fn a_caller_sending_one_call_at_a_time_gets_exact_decisions() {
    let redis = RedisServer::start();
    let l = limiter(&redis, Limit { rps: 1, burst: 100 }, FailMode::Closed).await;
    for i in 0..20u32 {
        match l.check("acme", "default", 1).await {
            Decision::Allow { remaining, .. } => assert_eq!(remaining, 99 - i),
            other => panic!("call {i}: {other:?}"),
        }
    }
    assert_eq!(l.decision_counts(), (20, 0));
}
