//! Run counters per workflow per minute in Redis (cluster-wide, survive restarts), behind
//! `GetMetrics`. One hash per minute, fields `<workflow>|<outcome>` plus `*|<outcome>` for
//! the total, expiring after 25 hours.

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

/// Adds counts of run outcomes (`started`, `succeeded`, `failed`, `cancelled`).
pub(crate) async fn record(
    conn: &RedisConn,
    prefix: &str,
    counts: &HashMap<(String, &'static str), u64>,
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
}

impl crate::Engine {
    /// Counts for `workflow` ('' for all) over the last `minutes` minutes (this one included).
    pub async fn run_metrics(&self, workflow: &str, minutes: u64) -> Result<RunCounts, EngineError> {
        let who = if workflow.is_empty() { "*" } else { workflow };
        let fields = ["started", "succeeded", "failed", "cancelled"].map(|w| format!("{who}|{w}"));
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
        }
        Ok(counts)
    }
}
