//! Run counters per workflow per minute in Redis (cluster-wide, survive restarts), behind
//! `GetMetrics`. One hash per minute, fields `<workflow>|<what>` plus `*|<what>` for the
//! total, expiring after 25 hours. `<what>` is an outcome (`started`, `succeeded`, `failed`,
//! `cancelled`), `retried` (step attempts scheduled again), or `d<i>`: finished runs whose
//! duration fell in bucket `i` of [`DURATION_BOUNDS_MS`]. Fixed buckets make minutes, replicas
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

/// The bucket of a duration.
pub(crate) fn duration_bucket(ms: u64) -> usize {
    DURATION_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(DURATION_BOUNDS_MS.len())
}

/// Adds counts: `what` is an outcome, `retried`, or a duration bucket `d<i>`.
pub(crate) async fn record(
    conn: &RedisConn,
    prefix: &str,
    counts: &HashMap<(String, String), u64>,
) -> Result<(), redis::RedisError> {
    let key = minute_key(prefix, now_minute());
    let mut pipe = redis::pipe();
    for ((workflow, what), n) in counts {
        pipe.hincr(&key, format!("{workflow}|{what}"), *n).ignore();
        pipe.hincr(&key, format!("*|{what}"), *n).ignore();
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
    pub duration_buckets: [u64; DURATION_BOUNDS_MS.len() + 1],
    /// Window length, seconds.
    pub window_secs: u64,
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

    /// The `q` quantile (0..=1) of run durations in ms, interpolated linearly inside its
    /// bucket; 0 with no data. The open last bucket answers with its lower bound: all we
    /// know there is "longer than an hour".
    pub fn duration_quantile_ms(&self, q: f64) -> f64 {
        let total = self.durations_counted();
        if total == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, n) in self.duration_buckets.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { DURATION_BOUNDS_MS[i - 1] } as f64;
                let Some(upper) = DURATION_BOUNDS_MS.get(i) else { return lower };
                return lower + (*upper as f64 - lower) * (rank - below as f64) / *n as f64;
            }
            below += n;
        }
        *DURATION_BOUNDS_MS.last().unwrap_or(&0) as f64
    }
}

impl crate::Engine {
    /// Counts for `workflow` ('' for all) over the last `minutes` minutes (this one included).
    pub async fn run_metrics(&self, workflow: &str, minutes: u64) -> Result<RunCounts, EngineError> {
        let who = if workflow.is_empty() { "*" } else { workflow };
        let mut fields: Vec<String> =
            ["started", "succeeded", "failed", "cancelled", "retried"].map(|w| format!("{who}|{w}")).into();
        fields.extend((0..=DURATION_BOUNDS_MS.len()).map(|i| format!("{who}|d{i}")));
        let now = now_minute();
        let mut pipe = redis::pipe();
        for m in (now + 1).saturating_sub(minutes)..=now {
            pipe.hmget(minute_key(&self.config.prefix, m), &fields);
        }
        let mut conn = self.queue.conn();
        let rows: Vec<Vec<Option<u64>>> = pipe.query_async(&mut conn).await?;
        let mut counts = RunCounts { window_secs: minutes * 60, ..Default::default() };
        for row in rows {
            let v = |i: usize| row.get(i).copied().flatten().unwrap_or(0);
            counts.started += v(0);
            counts.succeeded += v(1);
            counts.failed += v(2);
            counts.cancelled += v(3);
            counts.retried += v(4);
            for (i, bucket) in counts.duration_buckets.iter_mut().enumerate() {
                *bucket += v(5 + i);
            }
        }
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
