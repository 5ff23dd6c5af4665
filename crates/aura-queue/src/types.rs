//! The queue's inputs and outputs, and the parsing of script replies.

use std::time::Duration;

use redis::{FromRedisValue, Value};

use crate::{QueueError, Result};

/// How failed attempts are retried. Defaults follow the system AURA replaces: 3 attempts,
/// exponential backoff from 2 s.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (>= 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Factor applied per attempt (>= 1).
    pub multiplier: f64,
    /// Upper bound of a delay.
    pub max_backoff: Duration,
    /// Fraction randomised, in [0, 1].
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(300),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The compact form stored in the job hash (read by `lib.lua`'s `backoff_ms`).
    pub(crate) fn encode(&self) -> String {
        format!(
            "{},{},{},{}",
            self.initial_backoff.as_millis(),
            self.multiplier,
            self.max_backoff.as_millis(),
            self.jitter
        )
    }

    /// The delay before attempt `attempt + 1` without jitter (what the script computes).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self.initial_backoff.as_millis() as f64 * self.multiplier.powi(attempt as i32 - 1);
        Duration::from_millis(ms.min(self.max_backoff.as_millis() as f64) as u64)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Err(QueueError::Invalid { field: "retry", reason: reason.to_string() });
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return bad("multiplier must be a finite number >= 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter must be within [0, 1]");
        }
        Ok(())
    }
}

/// Highest priority; 0 is the lowest (and default).
pub const MAX_PRIORITY: u16 = 1000;

/// A plain job to enqueue.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Unique id; a second job with the same id is not created (dedup).
    pub id: String,
    /// The lane (queue name) it waits in.
    pub queue: String,
    /// Opaque payload handed to the claimer.
    pub payload: Vec<u8>,
    /// 0..=1000, higher first; FIFO within a priority.
    pub priority: u16,
    /// Not claimable before this delay has passed.
    pub delay: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Lease length of each claim; a claimer must heartbeat within it.
    pub lease: Duration,
}

impl NewJob {
    /// A job with default options.
    pub fn new(id: impl Into<String>, queue: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        NewJob {
            id: id.into(),
            queue: queue.into(),
            payload: payload.into(),
            priority: 0,
            delay: Duration::ZERO,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(30),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_name("id", &self.id)?;
        validate_name("queue", &self.queue)?;
        if self.priority > MAX_PRIORITY {
            return Err(QueueError::Invalid {
                field: "priority",
                reason: format!("must be 0..={MAX_PRIORITY}"),
            });
        }
        self.retry.validate()
    }
}

/// Ids and lane names: 1-200 printable characters without `,` or `:` (the scripts use
/// them as separators).
pub fn validate_name(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 200 {
        return Err(QueueError::Invalid { field, reason: "must be 1-200 characters".into() });
    }
    if value.chars().any(|c| c == ',' || c == ':' || c.is_control() || c.is_whitespace()) {
        return Err(QueueError::Invalid { field, reason: "must not contain ',', ':' or whitespace".into() });
    }
    Ok(())
}

/// One job of a flow.
#[derive(Clone, Debug)]
pub struct FlowJob {
    /// Unique id (callers use `<flow>.<step>`).
    pub id: String,
    /// Lane it runs on.
    pub queue: String,
    /// Opaque payload.
    pub payload: String,
    /// Ids of jobs that must complete first.
    pub parents: Vec<String>,
    /// Ids of jobs that wait for this one (the reverse of `parents`).
    pub dependents: Vec<String>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Lease length of each claim.
    pub lease: Duration,
    /// When it fails for good, skip its dependents instead of failing the flow.
    pub continue_on_failure: bool,
    /// Once ready, wait this long before it can be claimed (durable delays).
    pub release_delay: Duration,
}

/// A flow to create.
#[derive(Clone, Debug)]
pub struct NewFlow {
    /// Flow id.
    pub id: String,
    /// '' for none; otherwise a repeat returns the first flow.
    pub idempotency_key: String,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Opaque data returned with every claimed job of the flow.
    pub meta: String,
    /// Opaque input returned with every claimed job of the flow.
    pub input: String,
    /// Delay of the root jobs.
    pub delay: Duration,
    /// Priority of every job.
    pub priority: u16,
    /// Secondary listing index ('' for none), e.g. the workflow name.
    pub index: String,
    /// Past this, the flow fails and its unfinished jobs are cancelled (zero: no limit).
    pub timeout: Duration,
    /// Jobs of flows with different keys are claimed round-robin (per lane), so one key's
    /// backlog cannot starve another's; '' for none.
    pub concurrency_key: String,
    /// At most this many flows of the same `index` run at once in this partition; the rest
    /// wait, FIFO (0: no limit). Callers wanting a global limit put every flow of the
    /// index in one partition.
    pub concurrency_limit: u32,
    /// The jobs, parents before children not required.
    pub jobs: Vec<FlowJob>,
}

/// Result of `start_flow`.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowStart {
    /// False when the idempotency key matched an existing flow.
    pub created: bool,
    /// The created (or existing) flow id.
    pub flow_id: String,
    /// Creation time (Redis clock, ms) of a created flow; 0 for an existing one.
    pub created_at_ms: u64,
    /// A created flow's roots are ready (false: it waits for its index's concurrency limit).
    pub admitted: bool,
}

/// A claimed job's lease: what complete/fail/heartbeat need.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Partition holding the job.
    pub partition: usize,
    /// Job id.
    pub id: String,
    /// Fencing token of this claim.
    pub token: String,
}

/// A job handed to a claimer.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    /// The lease to report with.
    pub lease: Lease,
    /// Lane.
    pub queue: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Lease deadline (Redis clock, ms since epoch).
    pub deadline_ms: u64,
    /// The job's payload.
    pub payload: Vec<u8>,
    /// Flow id, empty for plain jobs.
    pub flow: String,
    /// The flow's meta.
    pub flow_meta: String,
    /// The flow's input.
    pub flow_input: String,
    /// Parent ids and their results (flow jobs).
    pub parent_results: Vec<(String, String)>,
    /// True when this claim moved the flow from pending to running.
    pub flow_started: bool,
    /// How long it waited ready (or due, when delayed) before this claim, ms.
    pub queue_wait_ms: u64,
}

/// The result of a non-blocking claim.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    /// Claimed jobs.
    pub jobs: Vec<ClaimedJob>,
    /// When nothing was claimed: earliest delayed job's ready time (ms), 0 if none.
    pub next_delayed_at_ms: u64,
}

/// A successful result.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Whose.
    pub lease: Lease,
    /// Opaque result.
    pub result: String,
}

/// What happened to a completion.
#[derive(Clone, Debug, PartialEq)]
pub enum CompleteOutcome {
    /// Recorded. For flow jobs: the dependents that became ready and, if the flow ended,
    /// its final state.
    Recorded {
        /// Dependents made ready by this completion.
        ready: Vec<String>,
        /// `succeeded` when this was the flow's last job, else empty.
        flow_state: String,
        /// The flow's index name (a run's workflow), '' for plain jobs.
        flow_index: String,
    },
    /// Refused: `stale lease`, `cancelled` or `unknown task`.
    Refused(String),
}

/// A failed attempt.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Whose.
    pub lease: Lease,
    /// Recorded on the job.
    pub error: String,
    /// False skips remaining attempts.
    pub retryable: bool,
    /// Minimum delay before the retry.
    pub retry_after: Option<Duration>,
}

/// What happened to a failure.
#[derive(Clone, Debug, PartialEq)]
pub enum FailOutcome {
    /// Will run again at `at_ms`.
    Retrying {
        /// Redis-clock ms when it becomes ready.
        at_ms: u64,
    },
    /// Dead-lettered. For flow jobs: the flow's state after it (`failed`, or `succeeded`/''
    /// with continue-on-failure) and the jobs cancelled or skipped because of it.
    Dead {
        /// The flow's new state ('' while it goes on).
        flow_state: String,
        /// Jobs cancelled (flow failed) or skipped (continue-on-failure).
        affected: Vec<String>,
    },
    /// Refused: `stale lease`, `cancelled` or `unknown task`.
    Refused(String),
}

/// A heartbeat's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum HeartbeatOutcome {
    /// Extended to this deadline (ms).
    Extended(u64),
    /// Its flow was cancelled: stop.
    Cancelled,
    /// The lease is gone: stop.
    Lost,
}

/// A job whose lease expired.
#[derive(Clone, Debug, PartialEq)]
pub struct Reaped {
    /// Partition.
    pub partition: usize,
    /// Job id.
    pub id: String,
    /// What happened.
    pub outcome: FailOutcome,
}

/// Counters of a queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Ready.
    pub waiting: u64,
    /// Delayed or backing off.
    pub delayed: u64,
    /// Leased.
    pub active: u64,
    /// Completed, total.
    pub completed: u64,
    /// Failed attempts, total.
    pub failed: u64,
    /// Dead letters now.
    pub dead: u64,
    /// Paused.
    pub paused: bool,
}

/// A dead letter.
#[derive(Clone, Debug)]
pub struct DeadJob {
    /// Partition.
    pub partition: usize,
    /// Job id.
    pub id: String,
    /// Last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Payload.
    pub payload: String,
    /// When (ms).
    pub died_at_ms: u64,
}

fn protocol(what: &str, v: &Value) -> QueueError {
    QueueError::Protocol(format!("{what}: {v:?}"))
}

fn items(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(protocol("expected an array", &other)),
    }
}

fn get<T: FromRedisValue>(v: &Value) -> Result<T> {
    T::from_redis_value(v.clone()).map_err(|e| QueueError::Protocol(e.to_string()))
}

pub(crate) fn parse_claim(partition: usize, reply: Value) -> Result<(Vec<ClaimedJob>, u64)> {
    // Flat: next_at, then per job 12 values and its parents (see claim.lua).
    let f = items(reply)?;
    let bad = || QueueError::Protocol("claim reply".into());
    let next_at: u64 = get(f.first().ok_or_else(bad)?)?;
    let mut jobs = Vec::new();
    let mut o = 1;
    while o < f.len() {
        let job = f.get(o..o + 12).ok_or_else(bad)?;
        let parents: usize = get(&job[11])?;
        let parent_results = f
            .get(o + 12..o + 12 + 2 * parents)
            .ok_or_else(bad)?
            .chunks(2)
            .map(|c| Ok((get(&c[0])?, get(&c[1])?)))
            .collect::<Result<_>>()?;
        jobs.push(ClaimedJob {
            lease: Lease { partition, id: get(&job[0])?, token: get(&job[3])? },
            queue: get(&job[1])?,
            attempt: get(&job[2])?,
            deadline_ms: get(&job[4])?,
            payload: get(&job[5])?,
            flow: get(&job[6])?,
            flow_meta: get(&job[7])?,
            flow_input: get(&job[8])?,
            parent_results,
            flow_started: get::<i64>(&job[9])? == 1,
            queue_wait_ms: get(&job[10])?,
        });
        o += 12 + 2 * parents;
    }
    Ok((jobs, next_at))
}

pub(crate) fn parse_flow_starts(reply: Value) -> Result<Vec<FlowStart>> {
    // Flat: 4 values per flow (start_flows.lua).
    let f = items(reply)?;
    if f.len() % 4 != 0 {
        return Err(QueueError::Protocol("start_flows reply".into()));
    }
    f.chunks(4)
        .map(|c| {
            let created = get::<i64>(&c[0])? == 1;
            let flow_id = get(&c[1])?;
            if !created {
                return Ok(FlowStart { created, flow_id, created_at_ms: 0, admitted: false });
            }
            Ok(FlowStart { created, flow_id, created_at_ms: get(&c[2])?, admitted: get::<i64>(&c[3])? == 1 })
        })
        .collect()
}

pub(crate) fn parse_complete(reply: Value) -> Result<Vec<CompleteOutcome>> {
    // Flat, per job: 1, flow state, flow index, n, n ready ids; or 0, reason (complete.lua).
    let f = items(reply)?;
    let bad = || QueueError::Protocol("complete reply".into());
    let mut out = Vec::new();
    let mut o = 0;
    while o < f.len() {
        if get::<i64>(&f[o])? == 1 {
            let head = f.get(o..o + 4).ok_or_else(bad)?;
            let n: usize = get(&head[3])?;
            let ready = f.get(o + 4..o + 4 + n).ok_or_else(bad)?.iter().map(get).collect::<Result<_>>()?;
            out.push(CompleteOutcome::Recorded {
                ready,
                flow_state: get(&head[1])?,
                flow_index: get(&head[2])?,
            });
            o += 4 + n;
        } else {
            out.push(CompleteOutcome::Refused(get(f.get(o + 1).ok_or_else(bad)?)?));
            o += 2;
        }
    }
    Ok(out)
}

fn parse_fail_fields(f: &[Value]) -> Result<FailOutcome> {
    let kind: String = get(&f[0])?;
    match kind.as_str() {
        "retry" => Ok(FailOutcome::Retrying { at_ms: get(&f[1])? }),
        "dead" => Ok(FailOutcome::Dead { flow_state: get(&f[1])?, affected: get(&f[2])? }),
        _ => Err(QueueError::Protocol(format!("fail kind {kind}"))),
    }
}

pub(crate) fn parse_fail(reply: Value) -> Result<Vec<FailOutcome>> {
    items(reply)?
        .into_iter()
        .map(|item| {
            let f = items(item)?;
            if get::<i64>(&f[0])? == 1 {
                parse_fail_fields(&f[1..])
            } else {
                Ok(FailOutcome::Refused(get(&f[1])?))
            }
        })
        .collect()
}

pub(crate) fn parse_reap(partition: usize, reply: Value) -> Result<(Vec<Reaped>, Vec<String>)> {
    let mut top = items(reply)?;
    if top.len() != 2 {
        return Err(QueueError::Protocol("reap reply".into()));
    }
    let timed_out: Vec<String> = get(&top[1])?;
    let reaped = items(top.swap_remove(0))?
        .into_iter()
        .map(|item| {
            let f = items(item)?;
            Ok(Reaped { partition, id: get(&f[0])?, outcome: parse_fail_fields(&f[1..])? })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((reaped, timed_out))
}

pub(crate) fn parse_heartbeat(reply: Value) -> Result<Vec<HeartbeatOutcome>> {
    items(reply)?
        .into_iter()
        .map(|v| {
            let n: i64 = get(&v)?;
            Ok(match n {
                -1 => HeartbeatOutcome::Cancelled,
                n if n > 0 => HeartbeatOutcome::Extended(n as u64),
                _ => HeartbeatOutcome::Lost,
            })
        })
        .collect()
}

/// How long finished work is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Retention {
    /// Most finished plain jobs kept per partition.
    pub jobs: u64,
    /// Oldest finished plain job kept.
    pub job_age: Duration,
    /// Most finished flows (runs) kept per partition.
    pub flows: u64,
    /// Oldest finished flow kept.
    pub flow_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            jobs: 10_000,
            job_age: Duration::from_secs(24 * 3600),
            flows: 100_000,
            flow_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}
