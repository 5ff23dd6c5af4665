//! Run counters per workflow per minute in Redis (cluster-wide, survive restarts), behind
//! `GetMetrics`. One hash per minute, fields `<workflow>|<what>` plus `*|<what>` for the
//! total, expiring after 25 hours. `<what>` is an outcome (`started`, `succeeded`, `failed`,
//! `cancelled`), `retried` (step attempts scheduled again), `d<i>`: finished runs whose
//! duration fell in bucket `i` of [`DURATION_BOUNDS_MS`], or `w<i>`: step attempts whose
//! queue wait (ready → claimed) fell in bucket `i`. Per step kind the subject is
//! `<workflow>#<kind>` (and `*#<kind>`), with `started` and `w<i>`. Fixed buckets make minutes, replicas
//! and windows add up by plain summing, which quantile sketches would not.

use std::collections::HashMap;

use aura_common::redis::RedisConn;

use crate::EngineError;

const RETENTION_SECS: i64 = 25 * 3600;

fn minute_key(prefix: &str, minute: u64) -> String {
    format!("{prefix}:{{m}}:{minute}")
}

fn now_minute() -> u64 {
    aura_queue::now_ms() / 60_000
}

/// Upper bounds (inclusive) of the run-duration buckets, milliseconds; one more bucket
/// holds everything longer.
pub const DURATION_BOUNDS_MS: [u64; 16] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000];

/// Step kinds reported per kind (the built-in ones and `external`).
pub const STEP_KINDS: [&str; 6] = ["noop", "http", "transform", "delay", "llm", "external"];

/// The bucket of a duration.
pub(crate) fn duration_bucket(ms: u64) -> usize {
    DURATION_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(DURATION_BOUNDS_MS.len())
}

/// Adds counts to this minute: `(subject, what)` → n, where the subject is a workflow or
/// `<workflow>#<kind>`; each is also added to the total subject (`*`, `*#<kind>`).
pub(crate) async fn record(
    conn: &RedisConn,
    prefix: &str,
    counts: &HashMap<(String, String), u64>,
) -> Result<(), redis::RedisError> {
    let key = minute_key(prefix, now_minute());
    let mut pipe = redis::pipe();
    for ((subject, what), n) in counts {
        let total = match subject.split_once('#') {
            Some((_, kind)) => format!("*#{kind}"),
            None => "*".to_string(),
        };
        pipe.hincr(&key, format!("{subject}|{what}"), *n).ignore();
        pipe.hincr(&key, format!("{total}|{what}"), *n).ignore();
    }
    pipe.expire(&key, RETENTION_SECS).ignore();
    let mut conn = conn.clone();
    pipe.query_async(&mut conn).await
}

/// Run counts over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunCounts {
    /// Started.
    pub started: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Step attempts scheduled again.
    pub retried: u64,
    /// Finished runs per duration bucket (see [`DURATION_BOUNDS_MS`]).
    pub duration_buckets: Buckets,
    /// Step attempts per queue-wait bucket.
    pub wait_buckets: Buckets,
    /// Per step kind that ran in the window.
    pub kinds: Vec<KindCounts>,
    /// Window length, seconds.
    pub window_secs: u64,
}

/// Counts per bucket of [`DURATION_BOUNDS_MS`].
pub type Buckets = [u64; DURATION_BOUNDS_MS.len() + 1];

/// One step kind over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindCounts {
    /// The kind.
    pub kind: String,
    /// Attempts started (claimed).
    pub started: u64,
    /// Attempts per queue-wait bucket.
    pub wait_buckets: Buckets,
}

/// The `q` quantile (0..=1) in ms of what `buckets` counted, interpolated linearly inside
/// its bucket; 0 with no data. The open last bucket answers with its lower bound: all we
/// know there is "longer than an hour".
pub fn quantile_ms(buckets: &Buckets, q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0 } else { DURATION_BOUNDS_MS[i - 1] } as f64;
            let Some(upper) = DURATION_BOUNDS_MS.get(i) else { return lower };
            return lower + (*upper as f64 - lower) * (rank - below as f64) / *n as f64;
        }
        below += n;
    }
    *DURATION_BOUNDS_MS.last().unwrap_or(&0) as f64
}

impl RunCounts {
    /// succeeded / (succeeded + failed).
    pub fn success_rate(&self) -> f64 {
        let finished = self.succeeded + self.failed;
        if finished == 0 { 0.0 } else { self.succeeded as f64 / finished as f64 }
    }

    /// Finished runs per second.
    pub fn throughput(&self) -> f64 {
        (self.succeeded + self.failed + self.cancelled) as f64 / self.window_secs.max(1) as f64
    }

    /// Runs with a recorded duration.
    pub fn durations_counted(&self) -> u64 {
        self.duration_buckets.iter().sum()
    }

    /// The `q` quantile (0..=1) of run durations, ms (see [`quantile_ms`]).
    pub fn duration_quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.duration_buckets, q)
    }
}

impl crate::Engine {
    /// Counts for `workflow` ('' for all) over the last `minutes` minutes (this one included).
    pub async fn run_metrics(&self, workflow: &str, minutes: u64) -> Result<RunCounts, EngineError> {
        let who = if workflow.is_empty() { "*" } else { workflow };
        let buckets = DURATION_BOUNDS_MS.len() + 1;
        let mut fields: Vec<String> =
            ["started", "succeeded", "failed", "cancelled", "retried"].map(|w| format!("{who}|{w}")).into();
        fields.extend((0..buckets).map(|i| format!("{who}|d{i}")));
        fields.extend((0..buckets).map(|i| format!("{who}|w{i}")));
        for kind in STEP_KINDS {
            fields.push(format!("{who}#{kind}|started"));
            fields.extend((0..buckets).map(|i| format!("{who}#{kind}|w{i}")));
        }
        let now = now_minute();
        let mut pipe = redis::pipe();
        for m in (now + 1).saturating_sub(minutes)..=now {
            pipe.hmget(minute_key(&self.config.prefix, m), &fields);
        }
        let mut conn = self.queue.conn();
        let rows: Vec<Vec<Option<u64>>> = pipe.query_async(&mut conn).await?;
        let mut counts = RunCounts { window_secs: minutes * 60, ..Default::default() };
        let mut kinds: Vec<KindCounts> =
            STEP_KINDS.iter().map(|k| KindCounts { kind: k.to_string(), ..Default::default() }).collect();
        for row in rows {
            let v = |i: usize| row.get(i).copied().flatten().unwrap_or(0);
            counts.started += v(0);
            counts.succeeded += v(1);
            counts.failed += v(2);
            counts.cancelled += v(3);
            counts.retried += v(4);
            for i in 0..buckets {
                counts.duration_buckets[i] += v(5 + i);
                counts.wait_buckets[i] += v(5 + buckets + i);
            }
            for (k, kind) in kinds.iter_mut().enumerate() {
                let at = 5 + 2 * buckets + k * (1 + buckets);
                kind.started += v(at);
                for i in 0..buckets {
                    kind.wait_buckets[i] += v(at + 1 + i);
                }
            }
        }
        counts.kinds = kinds.into_iter().filter(|k| k.started > 0).collect();
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut c = RunCounts::default();
        assert_eq!(c.duration_quantile_ms(0.5), 0.0);
        // 100 runs between 100 and 250 ms: the median is half way through that bucket.
        c.duration_buckets[duration_bucket(200)] = 100;
        assert_eq!(duration_bucket(200), 5);
        assert!((c.duration_quantile_ms(0.5) - 175.0).abs() < 1e-9);
        assert!((c.duration_quantile_ms(0.99) - 248.5).abs() < 1e-9);
        // One run over an hour: p100 reports the last bound.
        c.duration_buckets[duration_bucket(7_200_000)] = 1;
        assert_eq!(c.duration_quantile_ms(1.0), 3_600_000.0);
        assert_eq!(duration_bucket(0), 0);
        assert_eq!(duration_bucket(5), 0);
        assert_eq!(duration_bucket(6), 1);
    }
}
