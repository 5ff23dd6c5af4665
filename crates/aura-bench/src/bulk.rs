//! Scenario 1 (queue core) for AURA, and the result shape both systems report.
//!
//! Method, the same as the BullMQ peer's (`benchmarks/peers/bullmq/bench.mjs`, modelled on
//! `peers/bullmq/RESULTS.md` a): N no-op jobs are enqueued in batches of `enqueue_batch`,
//! each batch awaited before the next (t0 → t1). Only then does processing start (t1b):
//! `concurrency` consumer loops, each `claim_blocking(batch)` → `complete(batch)`, until the
//! N-th completion is acknowledged (t2). Enqueue and processing never overlap.
//! end-to-end = N/(t2−t0), enqueue-only = N/(t1−t0), process-only = N/(t2−t1b).
//! Between the phases the admin connection marks the phase (ECHO), resets and reads
//! Redis's counters (see [`crate::redis_stats`]); that time is outside every clock.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use aura_queue::{CompleteOutcome, Completion, Keyspace, NewJob, Queue};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    machine::{HostCpu, own_cpu_s},
    redis_stats::{PHASE_MARKER, PhaseStats, Snapshot, parse_info},
};

/// What one bulk scenario runs.
#[derive(Clone, Debug)]
pub struct BulkParams {
    /// Jobs.
    pub jobs: u64,
    /// Jobs per enqueue call (BullMQ: per `addBulk`).
    pub enqueue_batch: u64,
    /// Consumer loops (BullMQ: the Worker's `concurrency`).
    pub concurrency: usize,
    /// Jobs per claim (AURA only; BullMQ's worker fetches one job per call).
    pub claim_batch: usize,
    /// Queue partitions (AURA only).
    pub partitions: usize,
}

/// What one bulk scenario measured, for either system.
#[derive(Clone, Debug, Default)]
pub struct BulkResult {
    /// t1 − t0.
    pub enqueue_s: f64,
    /// t2 − t1b.
    pub process_s: f64,
    /// t2 − t0 (includes the counter reads between the phases, like the peer's).
    pub total_s: f64,
    /// Redis over the enqueue phase.
    pub enqueue: PhaseStats,
    /// Redis over the process phase.
    pub process: PhaseStats,
    /// CPU seconds of the benchmark client process (Rust or Node) per phase.
    pub client_cpu_enqueue_s: f64,
    /// See `client_cpu_enqueue_s`.
    pub client_cpu_process_s: f64,
    /// Machine-wide CPU per phase (to see other load).
    pub host_enqueue: HostCpu,
    /// See `host_enqueue`.
    pub host_process: HostCpu,
    /// Jobs found completed afterwards (checked against N).
    pub completed: u64,
}

impl BulkResult {
    /// Both phases.
    pub fn whole(&self) -> PhaseStats {
        self.enqueue.plus(&self.process)
    }
}

/// The admin connection's side of the phase protocol.
pub struct Admin {
    conn: MultiplexedConnection,
}

impl Admin {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        // No response timeout: a FLUSHALL of a large data set can outlast redis-rs's default.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        Ok(Admin { conn: client.get_multiplexed_async_connection_with_config(&config).await? })
    }

    /// `INFO commandstats cpu`.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let text: String =
            redis::cmd("INFO").arg("commandstats").arg("cpu").query_async(&mut self.conn).await?;
        Ok(parse_info(&text))
    }

    /// Marks the start of a phase in a MONITOR stream.
    pub async fn marker(&mut self, phase: &str) -> anyhow::Result<()> {
        let _: String =
            redis::cmd("ECHO").arg(format!("{PHASE_MARKER}{phase}")).query_async(&mut self.conn).await?;
        Ok(())
    }

    /// `CONFIG RESETSTAT`.
    pub async fn reset_stats(&mut self) -> anyhow::Result<()> {
        let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut self.conn).await?;
        Ok(())
    }

    /// `FLUSHALL` (scripts stay cached, as they would in production).
    pub async fn flushall(&mut self) -> anyhow::Result<()> {
        let () = redis::cmd("FLUSHALL").query_async(&mut self.conn).await?;
        Ok(())
    }
}

/// Runs the bulk scenario on AURA's queue crate, straight on Redis.
pub async fn run_aura(
    url: &str,
    admin: &mut Admin,
    p: &BulkParams,
    lane: &str,
) -> anyhow::Result<BulkResult> {
    ensure!(p.concurrency > 0 && p.claim_batch > 0 && p.enqueue_batch > 0, "sizes must be positive");
    let shutdown = CancellationToken::new();
    let _stop_waker = shutdown.clone().drop_guard();
    let conn = aura_common::redis::connect(url).await?;
    let queue = Queue::new(conn.clone(), url, Keyspace::new("bench", p.partitions), shutdown.clone())?;
    // Setup outside the clocks: open the connection; give the wake-up subscription time to
    // be in place (it is what a blocked claimer waits on).
    let _: String = redis::cmd("PING").query_async(&mut conn.clone()).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lanes = vec![lane.to_string()];

    // Enqueue phase.
    let start = admin.snapshot().await?;
    let (host0, own0) = (HostCpu::now(), own_cpu_s());
    admin.marker("enqueue").await?;
    admin.reset_stats().await?;
    let t0 = Instant::now();
    let mut next = 0u64;
    while next < p.jobs {
        let end = (next + p.enqueue_batch).min(p.jobs);
        let jobs: Vec<NewJob> =
            (next..end).map(|i| NewJob::new(format!("j{i}"), lane, format!("{{\"i\":{i}}}"))).collect();
        let created = queue.enqueue_bulk(jobs).await?;
        ensure!(created.iter().all(|c| *c), "a job id already existed");
        next = end;
    }
    let t1 = Instant::now();
    let after_enqueue = admin.snapshot().await?;
    let (host1, own1) = (HostCpu::now(), own_cpu_s());

    // Process phase.
    admin.marker("process").await?;
    admin.reset_stats().await?;
    let done = Arc::new(AtomicU64::new(0));
    let finished_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = CancellationToken::new();
    let t1b = Instant::now();
    let mut loops = Vec::with_capacity(p.concurrency);
    for _ in 0..p.concurrency {
        let (queue, lanes, done, finished_at, stop) =
            (queue.clone(), lanes.clone(), done.clone(), finished_at.clone(), stop.clone());
        let (jobs, batch) = (p.jobs, p.claim_batch);
        loops.push(tokio::spawn(async move {
            loop {
                let claimed = queue.claim_blocking(&lanes, batch, Duration::from_secs(60), &stop).await?;
                if claimed.is_empty() {
                    if stop.is_cancelled() {
                        return Ok::<_, anyhow::Error>(());
                    }
                    continue;
                }
                // The no-op processor: nothing to do; report every result at once.
                let k = claimed.len() as u64;
                let completions = claimed
                    .into_iter()
                    .map(|j| Completion { lease: j.lease, result: "null".into() })
                    .collect();
                for outcome in queue.complete(completions).await? {
                    if let CompleteOutcome::Refused(why) = outcome {
                        bail!("completion refused: {why}");
                    }
                }
                if done.fetch_add(k, Ordering::SeqCst) + k >= jobs {
                    finished_at.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
                    stop.cancel();
                }
            }
        }));
    }
    let joined = tokio::time::timeout(Duration::from_secs(600), futures::future::join_all(loops))
        .await
        .context("process phase timed out")?;
    let t2 = finished_at.lock().unwrap_or_else(|e| e.into_inner()).context("no job finished")?;
    let after_process = admin.snapshot().await?;
    let (host2, own2) = (HostCpu::now(), own_cpu_s());
    admin.marker("end").await?;
    for result in joined {
        result.context("consumer loop panicked")??;
    }

    let stats = queue.stats(lane).await?;
    ensure!(
        stats.completed == p.jobs && stats.waiting == 0 && stats.active == 0,
        "after the run: {stats:?}, expected {} completed",
        p.jobs
    );
    Ok(BulkResult {
        enqueue_s: (t1 - t0).as_secs_f64(),
        process_s: (t2 - t1b).as_secs_f64(),
        total_s: (t2 - t0).as_secs_f64(),
        enqueue: PhaseStats::new(&after_enqueue, start.cpu_s),
        process: PhaseStats::new(&after_process, after_enqueue.cpu_s),
        client_cpu_enqueue_s: own1 - own0,
        client_cpu_process_s: own2 - own1,
        host_enqueue: host1.since(&host0),
        host_process: host2.since(&host1),
        completed: stats.completed,
    })
}
