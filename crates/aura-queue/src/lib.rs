//! AURA's durable job queue on Redis, usable on its own (no gRPC inside).
//!
//! # Layout
//! - [`Queue`] — enqueue (single/bulk, dedup by id, priority, delay), batched claims with
//!   leases, complete/fail with fencing tokens, retries with exponential backoff and jitter,
//!   dead letters, pause/resume, stats, retention, stalled-job reaping.
//! - Flows ([`Queue::start_flow`]): a DAG of jobs created atomically; a job becomes ready
//!   when all its parents completed, so a fan-in job is enqueued exactly once however its
//!   parents race. AURA's runs are flows: each transition appends its lifecycle event
//!   (`run.started`, `step.succeeded`, …) to the topic `runs.<flow id>` inside the same
//!   script, in aura-bus's layout, so a run's events are in transition order.
//! - [`keys`] — partitions and their hash tags (Redis Cluster friendly).
//! - [`wake`] — blocking claims without polling Redis (pub/sub wake-ups).
//! - `lua/`: every state transition, one script each.
#![forbid(unsafe_code)]

mod group;
pub mod keys;
mod scripts;
mod types;
pub mod wake;

use std::{sync::Arc, time::Duration};

use aura_common::redis::RedisConn;
use redis::{AsyncCommands, Value};
use tokio_util::sync::CancellationToken;

pub use keys::Keyspace;
pub use types::*;
use wake::Waker;

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The caller passed something the queue cannot accept.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which input.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A script returned something this version does not understand (a bug).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, QueueError>;

/// Most flows created per script call by [`Queue::start_flows`]: large enough that a call's
/// fixed costs vanish per flow, small enough that one call holds Redis for milliseconds,
/// not tens of them.
pub const START_FLOWS_PER_CALL: usize = 100;

/// A handle on the queue of one AURA installation. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    conn: RedisConn,
    keys: Keyspace,
    waker: Arc<Waker>,
    /// Most claimed jobs per concurrency key and lane at once (0: no cap).
    key_cap: u32,
    /// Single starts waiting to share a script call (see `group`).
    start_groups: Arc<group::StartGroups>,
}

impl Queue {
    /// Opens the queue. `redis_url` is used for the wake-up subscription (a dedicated
    /// connection); `conn` for everything else.
    pub fn new(
        conn: RedisConn,
        redis_url: &str,
        keys: Keyspace,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let waker = Waker::start(redis_url, keys.wake_prefix(), shutdown)?;
        let start_groups = Arc::default();
        Ok(Queue { conn, keys, waker, key_cap: 0, start_groups })
    }

    /// Caps the jobs of one concurrency key that may be claimed (active) at once, per lane
    /// and partition; further ready jobs of that key wait while other keys are served.
    pub fn with_key_concurrency_cap(mut self, cap: u32) -> Self {
        self.key_cap = cap;
        self
    }

    /// The stream key of topic `runs.<flow>` for a flow in `partition` (aura-bus reads it).
    pub fn flow_events_key(&self, partition: usize, flow: &str) -> String {
        format!("{}ev:runs.{flow}", self.keys.partition(partition))
    }

    /// The key space (prefix and partitions).
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// The Redis connection, for callers that keep their own records beside the queue's.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The process's pub/sub fan-out; other caches may invalidate through it: publish to
    /// `<wake_prefix><lane>` and compare [`Waker::generation`] of `lane`.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    fn invocation<'a>(&self, script: &'a redis::Script, p: usize) -> redis::ScriptInvocation<'a> {
        let mut inv = script.key(self.keys.route_key(p));
        inv.arg(self.keys.partition(p)).arg(self.keys.wake_prefix());
        inv
    }

    /// Enqueues one job. Returns false when a job with the same id exists (dedup).
    pub async fn enqueue(&self, job: NewJob) -> Result<bool> {
        Ok(self.enqueue_bulk(vec![job]).await?[0])
    }

    /// Enqueues many jobs with one script call per partition. Returns, per job, whether it
    /// was created (false: a job with that id existed).
    pub async fn enqueue_bulk(&self, jobs: Vec<NewJob>) -> Result<Vec<bool>> {
        let mut by_partition: Vec<Vec<(usize, NewJob)>> = vec![Vec::new(); self.keys.partitions()];
        for (i, job) in jobs.into_iter().enumerate() {
            job.validate()?;
            by_partition[self.keys.partition_of(&job.id)].push((i, job));
        }
        let total = by_partition.iter().map(Vec::len).sum();
        let mut created = vec![false; total];
        for (p, items) in by_partition.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let mut inv = self.invocation(&scripts::ENQUEUE, p);
            inv.arg(items.len());
            for (_, job) in &items {
                inv.arg(&job.id)
                    .arg(&job.queue)
                    .arg(job.priority)
                    .arg(job.delay.as_millis() as u64)
                    .arg(job.retry.max_attempts)
                    .arg(job.retry.encode())
                    .arg(job.lease.as_millis() as u64)
                    .arg(&job.payload);
            }
            let mut conn = self.conn.clone();
            let reply: Vec<i64> = inv.invoke_async(&mut conn).await?;
            for ((i, _), flag) in items.iter().zip(reply) {
                created[*i] = flag == 1;
            }
        }
        Ok(created)
    }

    /// Creates a flow (see the crate docs) in partition `partition`. Concurrent calls share
    /// script calls (group commit: the first goes at once, those arriving meanwhile go
    /// together next), so many clients starting one flow each cost Redis about what one
    /// [`Queue::start_flows`] batch does.
    pub async fn start_flow(&self, partition: usize, flow: NewFlow) -> Result<FlowStart> {
        if partition >= self.keys.partitions() {
            return Err(QueueError::Invalid {
                field: "partition",
                reason: format!("{partition} out of range"),
            });
        }
        let (reply, started) = tokio::sync::oneshot::channel();
        if self.start_groups.push(&partition, (flow, reply)) {
            let this = self.clone();
            // Spawned, so a caller that gives up cannot strand the others' starts.
            tokio::spawn(async move { this.drain_starts(partition).await });
        }
        started.await.map_err(|_| QueueError::Protocol("the shared start call was dropped".into()))?
    }

    /// Runs the waiting single starts of `partition`, a call's worth at a time, until none
    /// wait.
    async fn drain_starts(&self, partition: usize) {
        loop {
            let batch = self.start_groups.take(&partition, START_FLOWS_PER_CALL);
            if batch.is_empty() {
                return;
            }
            let (flows, replies): (Vec<NewFlow>, Vec<_>) = batch.into_iter().unzip();
            match self.start_flows(partition, flows).await {
                Ok(starts) if starts.len() == replies.len() => {
                    for (reply, start) in replies.into_iter().zip(starts) {
                        let _ = reply.send(Ok(start));
                    }
                }
                Ok(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(QueueError::Protocol("start_flows reply".into())));
                    }
                }
                Err(err) => {
                    for reply in replies {
                        let _ = reply.send(Err(group::duplicate(&err)));
                    }
                }
            }
        }
    }

    /// Creates many flows in partition `partition`, in order, with one script call per
    /// [`START_FLOWS_PER_CALL`] flows (each flow on its own: a repeated idempotency key
    /// returns the first flow, even within the batch). One result per flow.
    pub async fn start_flows(&self, partition: usize, flows: Vec<NewFlow>) -> Result<Vec<FlowStart>> {
        let mut out = Vec::with_capacity(flows.len());
        for chunk in flows.chunks(START_FLOWS_PER_CALL) {
            let mut inv = self.invocation(&scripts::START_FLOWS, partition);
            inv.arg(chunk.len());
            for flow in chunk {
                inv.arg(&flow.id)
                    .arg(&flow.idempotency_key)
                    .arg(flow.idempotency_ttl.as_secs().max(1))
                    .arg(&flow.meta)
                    .arg(&flow.input)
                    .arg(flow.delay.as_millis() as u64)
                    .arg(flow.priority)
                    .arg(&flow.index)
                    .arg(&flow.concurrency_key)
                    .arg(flow.concurrency_limit)
                    .arg(flow.timeout.as_millis() as u64)
                    .arg(flow.jobs.len());
                for job in &flow.jobs {
                    inv.arg(&job.id)
                        .arg(&job.queue)
                        .arg(job.retry.max_attempts)
                        .arg(job.retry.encode())
                        .arg(job.lease.as_millis() as u64)
                        .arg(&job.payload)
                        .arg(job.parents.join(","))
                        .arg(job.dependents.join(","))
                        .arg(if job.continue_on_failure { "1" } else { "0" })
                        .arg(job.release_delay.as_millis() as u64);
                }
            }
            let mut conn = self.conn.clone();
            out.extend(types::parse_flow_starts(inv.invoke_async(&mut conn).await?)?);
        }
        Ok(out)
    }

    /// Claims up to `max` ready jobs from `queues` without waiting. Partitions are visited
    /// from a rotating start so none is favoured.
    pub async fn claim(&self, queues: &[String], max: usize) -> Result<Claim> {
        let partitions = self.keys.partitions();
        let start = rand::random_range(0..partitions);
        let mut claim = Claim::default();
        for step in 0..partitions {
            let p = (start + step) % partitions;
            let remaining = max - claim.jobs.len();
            if remaining == 0 {
                break;
            }
            let mut inv = self.invocation(&scripts::CLAIM, p);
            inv.arg(remaining).arg(self.key_cap);
            for q in queues {
                inv.arg(q);
            }
            let mut conn = self.conn.clone();
            let reply: Value = inv.invoke_async(&mut conn).await?;
            let (jobs, next_at) = types::parse_claim(p, reply)?;
            claim.jobs.extend(jobs);
            if next_at > 0 && (claim.next_delayed_at_ms == 0 || next_at < claim.next_delayed_at_ms) {
                claim.next_delayed_at_ms = next_at;
            }
        }
        Ok(claim)
    }

    /// Claims up to `max` jobs, waiting up to `wait` for one to become ready. Waiting costs
    /// Redis nothing: a pub/sub message wakes the claimer when a lane goes from empty to
    /// non-empty, and a timer wakes it when the earliest delayed job is due.
    pub async fn claim_blocking(
        &self,
        queues: &[String],
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<ClaimedJob>> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let subscription = self.waker.watch(queues);
            let claim = self.claim(queues, max).await?;
            if !claim.jobs.is_empty() {
                return Ok(claim.jobs);
            }
            let mut until = end;
            if claim.next_delayed_at_ms > 0 {
                let in_ms = claim.next_delayed_at_ms.saturating_sub(now_ms());
                until = until.min(tokio::time::Instant::now() + Duration::from_millis(in_ms + 1));
            }
            tokio::select! {
                _ = subscription.changed() => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = cancel.cancelled() => return Ok(Vec::new()),
            }
            if tokio::time::Instant::now() >= end {
                return Ok(Vec::new());
            }
        }
    }

    /// Records successful results. Each item is refused when its lease token is stale.
    pub async fn complete(&self, items: Vec<Completion>) -> Result<Vec<CompleteOutcome>> {
        self.per_partition(
            items,
            |c| c.lease.partition,
            |this, p, items| {
                let mut inv = this.invocation(&scripts::COMPLETE, p);
                inv.arg(items.len());
                for c in items {
                    inv.arg(&c.lease.id).arg(&c.lease.token).arg(&c.result);
                }
                inv
            },
            types::parse_complete,
        )
        .await
    }

    /// Records failed attempts (retry with backoff, or dead letter).
    pub async fn fail(&self, items: Vec<Failure>) -> Result<Vec<FailOutcome>> {
        self.per_partition(
            items,
            |f| f.lease.partition,
            |this, p, items| {
                let mut inv = this.invocation(&scripts::FAIL, p);
                inv.arg(items.len());
                for f in items {
                    inv.arg(&f.lease.id)
                        .arg(&f.lease.token)
                        .arg(&f.error)
                        .arg(if f.retryable { "1" } else { "0" })
                        .arg(f.retry_after.map_or(0, |d| d.as_millis() as u64))
                        .arg(rand::random::<f64>());
                }
                inv
            },
            types::parse_fail,
        )
        .await
    }

    /// Groups items by partition, runs one script call per partition, and returns the
    /// outcomes in the callers' order.
    async fn per_partition<I, O>(
        &self,
        items: Vec<I>,
        partition: impl Fn(&I) -> usize,
        build: impl for<'a> Fn(&'a Self, usize, &[I]) -> redis::ScriptInvocation<'static>,
        parse: impl Fn(Value) -> Result<Vec<O>>,
    ) -> Result<Vec<O>> {
        let n = items.len();
        let mut groups: Vec<Vec<(usize, I)>> = (0..self.keys.partitions()).map(|_| Vec::new()).collect();
        for (i, item) in items.into_iter().enumerate() {
            let p = partition(&item);
            if p >= groups.len() {
                return Err(QueueError::Invalid { field: "partition", reason: format!("{p} out of range") });
            }
            groups[p].push((i, item));
        }
        let mut out: Vec<Option<O>> = (0..n).map(|_| None).collect();
        for (p, group) in groups.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (idx, items): (Vec<usize>, Vec<I>) = group.into_iter().unzip();
            let inv = build(self, p, &items);
            let mut conn = self.conn.clone();
            let reply: Value = inv.invoke_async(&mut conn).await?;
            for (i, o) in idx.into_iter().zip(parse(reply)?) {
                out[i] = Some(o);
            }
        }
        out.into_iter().map(|o| o.ok_or_else(|| QueueError::Protocol("missing outcome".into()))).collect()
    }

    /// Extends leases; tells which were cancelled or lost.
    pub async fn heartbeat(&self, leases: Vec<Lease>, extend: Duration) -> Result<Vec<HeartbeatOutcome>> {
        let extend_ms = extend.as_millis() as u64;
        self.per_partition(
            leases,
            |l| l.partition,
            move |this, p, items| {
                let mut inv = scripts::HEARTBEAT.key(this.keys.route_key(p));
                inv.arg(this.keys.partition(p)).arg(extend_ms);
                for l in items {
                    inv.arg(&l.id).arg(&l.token);
                }
                inv
            },
            types::parse_heartbeat,
        )
        .await
    }

    /// Hands claimed jobs back unfinished: ready again at once, the attempt not counted.
    /// Returns, per lease, whether it was released (false: stale).
    pub async fn release(&self, leases: Vec<Lease>) -> Result<Vec<bool>> {
        self.per_partition(
            leases,
            |l| l.partition,
            |this, p, items| {
                let mut inv = this.invocation(&scripts::RELEASE, p);
                for l in items {
                    inv.arg(&l.id).arg(&l.token);
                }
                inv
            },
            |reply| {
                let flags: Vec<i64> = redis::FromRedisValue::from_redis_value(reply)
                    .map_err(|e| QueueError::Protocol(e.to_string()))?;
                Ok(flags.into_iter().map(|f| f == 1).collect())
            },
        )
        .await
    }

    /// Hands back jobs whose lease expired and fails flows past their timeout, in every
    /// partition. Returns what happened to each job, and the timed-out flows (with their
    /// partition). Safe to run concurrently from many processes.
    pub async fn reap(&self, limit: usize) -> Result<(Vec<Reaped>, Vec<(usize, String)>)> {
        let mut out = Vec::new();
        let mut timed_out = Vec::new();
        for p in 0..self.keys.partitions() {
            let mut inv = self.invocation(&scripts::REAP, p);
            inv.arg(limit).arg(rand::random::<f64>());
            let mut conn = self.conn.clone();
            let reply: Value = inv.invoke_async(&mut conn).await?;
            let (reaped, flows) = types::parse_reap(p, reply)?;
            out.extend(reaped);
            timed_out.extend(flows.into_iter().map(|f| (p, f)));
        }
        Ok((out, timed_out))
    }

    /// Applies retention: finished plain jobs and finished flows (with their jobs and
    /// events) beyond `retention` are deleted. Returns (jobs, flows) deleted.
    pub async fn trim(&self, retention: &Retention) -> Result<(u64, u64)> {
        let (mut jobs, mut flows) = (0, 0);
        for p in 0..self.keys.partitions() {
            let mut inv = scripts::TRIM.key(self.keys.route_key(p));
            inv.arg(self.keys.partition(p))
                .arg(retention.jobs)
                .arg(retention.job_age.as_millis() as u64)
                .arg(1000)
                .arg(retention.flows)
                .arg(retention.flow_age.as_millis() as u64);
            let mut conn = self.conn.clone();
            let (j, f): (u64, u64) = inv.invoke_async(&mut conn).await?;
            jobs += j;
            flows += f;
        }
        Ok((jobs, flows))
    }

    /// Cancels a flow; returns its state afterwards and the jobs that were cancelled.
    pub async fn cancel_flow(
        &self,
        partition: usize,
        flow_id: &str,
        reason: &str,
    ) -> Result<(String, Vec<String>)> {
        let mut inv = self.invocation(&scripts::CANCEL_FLOW, partition);
        inv.arg(flow_id).arg(reason);
        let mut conn = self.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Counters of a queue, summed over partitions (counted, never scanned).
    pub async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let mut stats = QueueStats { queue: queue.to_string(), ..Default::default() };
        for p in 0..self.keys.partitions() {
            let pre = self.keys.partition(p);
            let mut pipe = redis::pipe();
            pipe.zcard(format!("{pre}q:{queue}:wait"))
                .zcard(format!("{pre}q:{queue}:delayed"))
                .zcard(format!("{pre}q:{queue}:dead"))
                .hmget(format!("{pre}q:{queue}:stats"), &["active", "completed", "failed", "keyed"])
                .exists(format!("{pre}q:{queue}:paused"));
            let mut conn = self.conn.clone();
            let (waiting, delayed, dead, counters, paused): (u64, u64, u64, Vec<Option<i64>>, bool) =
                pipe.query_async(&mut conn).await?;
            let c = |i: usize| counters.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
            stats.waiting += waiting + c(3);
            stats.delayed += delayed;
            stats.dead += dead;
            stats.active += c(0);
            stats.completed += c(1);
            stats.failed += c(2);
            stats.paused |= paused;
        }
        Ok(stats)
    }

    /// Pauses claims from a queue (enqueues still succeed).
    pub async fn pause(&self, queue: &str) -> Result<()> {
        // One command per partition: partitions are different cluster slots, and a cluster
        // refuses a pipeline that crosses slots.
        let mut conn = self.conn.clone();
        for p in 0..self.keys.partitions() {
            let () = conn.set(format!("{}q:{queue}:paused", self.keys.partition(p)), 1).await?;
        }
        Ok(())
    }

    /// Resumes a paused queue and wakes its claimers.
    pub async fn resume(&self, queue: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        for p in 0..self.keys.partitions() {
            let () = conn.del(format!("{}q:{queue}:paused", self.keys.partition(p))).await?;
        }
        let _: i64 = conn.publish(format!("{}{queue}", self.keys.wake_prefix()), "1").await?;
        Ok(())
    }

    /// Lists dead letters oldest first. `cursor` is (partition, offset); returns the next.
    pub async fn dead_letters(
        &self,
        queue: &str,
        cursor: (usize, usize),
        limit: usize,
    ) -> Result<(Vec<DeadJob>, Option<(usize, usize)>)> {
        let (mut p, mut offset) = cursor;
        let mut out = Vec::new();
        while p < self.keys.partitions() && out.len() < limit {
            let pre = self.keys.partition(p);
            let mut conn = self.conn.clone();
            let want = limit - out.len();
            let entries: Vec<(String, f64)> = conn
                .zrange_withscores(format!("{pre}q:{queue}:dead"), offset as isize, (offset + want) as isize)
                .await?;
            let has_more = entries.len() > want;
            for (id, died) in entries.into_iter().take(want) {
                let fields: (Option<String>, Option<u32>, Option<String>) =
                    conn.hmget(format!("{pre}j:{id}"), &["e", "a", "d"]).await?;
                out.push(DeadJob {
                    partition: p,
                    id,
                    error: fields.0.unwrap_or_default(),
                    attempts: fields.1.unwrap_or(0),
                    payload: fields.2.unwrap_or_default(),
                    died_at_ms: died as u64,
                });
                offset += 1;
            }
            if has_more {
                return Ok((out, Some((p, offset))));
            }
            p += 1;
            offset = 0;
        }
        let next = (p < self.keys.partitions()).then_some((p, offset));
        Ok((out, next))
    }

    /// Retries dead letters: the given ids, or every one when `ids` is `None`.
    pub async fn retry_dead(&self, queue: &str, ids: Option<Vec<(usize, String)>>) -> Result<u64> {
        let mut total = 0;
        for p in 0..self.keys.partitions() {
            let pre = self.keys.partition(p);
            let targets: Vec<String> = match &ids {
                Some(ids) => ids.iter().filter(|(ip, _)| *ip == p).map(|(_, id)| id.clone()).collect(),
                None => {
                    let mut conn = self.conn.clone();
                    conn.zrange(format!("{pre}q:{queue}:dead"), 0, -1).await?
                }
            };
            for chunk in targets.chunks(500) {
                let mut inv = self.invocation(&scripts::RETRY_DEAD, p);
                inv.arg(queue);
                for id in chunk {
                    inv.arg(id);
                }
                let mut conn = self.conn.clone();
                let n: u64 = inv.invoke_async(&mut conn).await?;
                total += n;
            }
        }
        Ok(total)
    }

    /// Deletes every dead letter of a queue; returns how many.
    pub async fn purge_dead(&self, queue: &str) -> Result<u64> {
        let mut total = 0;
        for p in 0..self.keys.partitions() {
            let pre = self.keys.partition(p);
            let mut conn = self.conn.clone();
            let ids: Vec<String> = conn.zrange(format!("{pre}q:{queue}:dead"), 0, -1).await?;
            if ids.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for id in &ids {
                pipe.del(format!("{pre}j:{id}")).ignore();
            }
            pipe.del(format!("{pre}q:{queue}:dead")).ignore();
            pipe.hset(format!("{pre}q:{queue}:stats"), "dead", 0).ignore();
            let () = pipe.query_async(&mut conn).await?;
            total += ids.len() as u64;
        }
        Ok(total)
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock (only used to size waits; all
/// stored times come from Redis's clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
