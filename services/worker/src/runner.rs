//! Poll → execute → report.
//!
//! The runner polls for exactly as many tasks as it has free slots (backpressure), runs
//! each on its own task with the step's timeout, batches results into one
//! `ReportTaskResults` call per burst, and heartbeats every in-flight lease in one call per
//! period; a heartbeat answering "cancelled" or "lost" aborts the step at once.
//!
//! Per-kind limits: every built-in kind waits in the one `builtin` queue and a poll cannot
//! pick kinds, so any task claimed may be of any kind. The runner therefore asks for at most
//! `min(free slots, free slots of each limited kind)` tasks: whatever kinds arrive, each can
//! start at once. The price is that a saturated limited kind (say `llm=4` with four calls
//! running) pauses polling for every kind until one of them finishes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use aura_common::CancellationToken;
use aura_proto::{json, v1 as pb};
use aura_steps::{Executor, StepError, StepInput};
use pb::scheduler_client::SchedulerClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::Config;

/// How long one PollTasks waits. Short enough that a drain never waits long for the poll
/// in flight (which is never cut: its tasks could be lost until their lease expires).
const POLL_WAIT: Duration = Duration::from_secs(5);

/// A balanced channel over the Scheduler endpoints (`https://` ones checked against `tls`).
pub fn channel(urls: &[String], tls: Option<&aura_common::tls::ClientTls>) -> anyhow::Result<Channel> {
    aura_common::grpc::balanced_channel(urls, tls).map_err(|e| anyhow::anyhow!("scheduler: {e}"))
}

struct InFlight {
    lease_token: String,
    kind: String,
    abort: tokio::task::AbortHandle,
}

struct Inner {
    config: Config,
    client: SchedulerClient<Channel>,
    executor: Executor,
    /// One permit per task in flight.
    slots: Arc<Semaphore>,
    /// One semaphore per kind with a limit (`Config::kind_concurrency`).
    kind_slots: HashMap<String, Arc<Semaphore>>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    results: mpsc::UnboundedSender<pb::TaskResult>,
    results_rx: Mutex<Option<mpsc::UnboundedReceiver<pb::TaskResult>>>,
    /// Stops polling (drain started).
    draining: CancellationToken,
    /// Set once the drain finished.
    drained: tokio::sync::OnceCell<(u32, u32)>,
    /// True once the poll loop was started (a drain then waits for it to stop).
    polling: AtomicBool,
    /// Cancelled when the poll loop has returned: no poll is in flight any more.
    poll_stopped: CancellationToken,
    /// Tasks a poll brought in after the drain started, handed straight back.
    released_while_draining: AtomicU32,
    /// Stops the reporter once every result is sent.
    reporter_stop: CancellationToken,
    reporter_done: tokio::sync::Notify,
    /// Signalled whenever a task leaves the in-flight set (a drain waits on it).
    task_left: tokio::sync::Notify,
    reporter_finished: AtomicBool,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

/// The worker's engine room. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

impl Runner {
    /// A runner polling through `channel`.
    pub fn new(config: Config, channel: Channel, executor: Executor) -> Self {
        let (results, results_rx) = mpsc::unbounded_channel();
        let client = SchedulerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let kind_slots = config
            .kind_concurrency
            .iter()
            .map(|(kind, limit)| (kind.clone(), Arc::new(Semaphore::new(*limit))))
            .collect();
        Runner {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.concurrency)),
                kind_slots,
                config,
                client,
                executor,
                in_flight: Mutex::new(HashMap::new()),
                results,
                results_rx: Mutex::new(Some(results_rx)),
                draining: CancellationToken::new(),
                drained: tokio::sync::OnceCell::new(),
                polling: AtomicBool::new(false),
                poll_stopped: CancellationToken::new(),
                released_while_draining: AtomicU32::new(0),
                reporter_stop: CancellationToken::new(),
                reporter_done: tokio::sync::Notify::new(),
                task_left: tokio::sync::Notify::new(),
                reporter_finished: AtomicBool::new(false),
                succeeded: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// Removes a task from the in-flight set (whoever takes it reports it, or not at all).
    fn take(&self, task_id: &str) -> Option<InFlight> {
        let taken = self.in_flight().remove(task_id);
        if taken.is_some() {
            self.inner.task_left.notify_waiters();
        }
        taken
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown` (then drains with the configured timeout) or a `Drain` call.
    pub async fn run(self, shutdown: CancellationToken) {
        let rx = self.inner.results_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(rx) = rx else { return };
        let reporter = tokio::spawn(self.clone().report_loop(rx));
        let heartbeats = tokio::spawn(self.clone().heartbeat_loop());
        self.inner.polling.store(true, Ordering::SeqCst);
        let poller = tokio::spawn(self.clone().poll_loop());
        let stop = self.inner.draining.clone();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = stop.cancelled() => {}
        }
        self.drain(None).await;
        let _ = reporter.await;
        heartbeats.abort();
        poller.abort();
    }

    /// Polls until the drain starts. A poll in flight is never cut short: the tasks it
    /// claimed could only come back when their leases expire (costing an attempt). Tasks it
    /// brings in after the drain started are handed straight back by [`Runner::start`].
    async fn poll_loop(self) {
        let _stopped = self.inner.poll_stopped.clone().drop_guard();
        let mut backoff = Duration::from_millis(100);
        while !self.inner.draining.is_cancelled() {
            let want = tokio::select! {
                want = self.room() => want,
                _ = self.inner.draining.cancelled() => return,
            };
            if want == 0 {
                return; // the semaphores were closed: nothing can run any more
            }
            let request = pb::PollTasksRequest {
                worker_id: self.inner.config.worker_id.clone(),
                queues: self.inner.config.queues.clone(),
                max_tasks: want.min(1000) as u32,
                wait: Some(prost_types::Duration { seconds: POLL_WAIT.as_secs() as i64, nanos: 0 }),
            };
            let mut client = self.inner.client.clone();
            match client.poll_tasks(request).await {
                Ok(resp) => {
                    backoff = Duration::from_millis(100);
                    for task in resp.into_inner().tasks {
                        self.start(task);
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "poll failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.inner.draining.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits until a task of any kind could start, then returns how many could: the
    /// smallest number of free slots over the total and every limited kind. Only the poll
    /// loop takes permits outside running tasks, so the count can only grow until the
    /// tasks of the next poll start.
    async fn room(&self) -> usize {
        let Ok(first) = self.inner.slots.clone().acquire_owned().await else { return 0 };
        let mut want = 1 + self.inner.slots.available_permits();
        let mut held: Vec<OwnedSemaphorePermit> = Vec::with_capacity(self.inner.kind_slots.len());
        for slots in self.inner.kind_slots.values() {
            let Ok(permit) = slots.clone().acquire_owned().await else { return 0 };
            held.push(permit);
            want = want.min(1 + slots.available_permits());
        }
        drop(first);
        drop(held);
        want
    }

    fn start(&self, task: pb::Task) {
        if self.inner.draining.is_cancelled() {
            self.inner.released_while_draining.fetch_add(1, Ordering::Relaxed);
            let _ = self.inner.results.send(release(&task, "worker is draining"));
            return;
        }
        // Both permits are free by construction (see `room`); if not, hand the task back
        // untouched rather than run more than allowed.
        let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
            let _ = self.inner.results.send(release(&task, "worker has no free slot"));
            return;
        };
        let kind_permit = match self.inner.kind_slots.get(&task.kind) {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let _ = self.inner.results.send(release(&task, "worker is at its limit for this kind"));
                    return;
                }
            },
        };
        let runner = self.clone();
        let task_id = task.task_id.clone();
        let lease_token = task.lease_token.clone();
        let kind = task.kind.clone();
        let mut in_flight = self.in_flight();
        let handle = tokio::spawn(async move {
            let result = runner.execute(&task).await;
            // Only the runner that still owns the task reports it (a cancelled one does not).
            if runner.take(&task.task_id).is_some() {
                let _ = runner.inner.results.send(result);
            }
            drop((permit, kind_permit));
        });
        in_flight.insert(task_id, InFlight { lease_token, kind, abort: handle.abort_handle() });
    }

    async fn execute(&self, task: &pb::Task) -> pb::TaskResult {
        let config = task.config.as_ref().map(json::struct_to_map).unwrap_or_default();
        let input = task.input.as_ref().map(json::struct_to_map).unwrap_or_default();
        let deps = task.dependency_outputs.iter().map(|(k, v)| (k.clone(), json::value_to_json(v))).collect();
        let timeout = task
            .timeout
            .as_ref()
            .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
            .unwrap_or(Duration::from_secs(60));
        let step = StepInput {
            kind: &task.kind,
            config: &config,
            input: &input,
            dependency_outputs: &deps,
            timeout,
        };
        // The step's span joins the trace of the StartRun that caused the run, carried inside
        // the task (this attempt may run minutes later, on another machine).
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {}", task.step_id),
            otel.status_code = tracing::field::Empty,
            workflow = %task.workflow_name,
            run_id = %task.run_id,
            step_id = %task.step_id,
            attempt = task.attempt,
            kind = %task.kind,
            trace_id = tracing::field::Empty,
        );
        aura_common::telemetry::set_parent(&span, &task.trace_context);
        let outcome = match tokio::time::timeout(timeout, self.inner.executor.run(&step))
            .instrument(span.clone())
            .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(StepError::Retryable {
                message: format!("step timed out after {timeout:?}"),
                retry_after: None,
            }),
        };
        let outcome = match outcome {
            Ok(output) => {
                self.inner.succeeded.fetch_add(1, Ordering::Relaxed);
                pb::task_result::Outcome::Output(json::json_to_value(&output))
            }
            Err(err) => {
                self.inner.failed.fetch_add(1, Ordering::Relaxed);
                span.record("otel.status_code", "ERROR");
                span.in_scope(|| tracing::info!(error = %err, "step attempt failed"));
                let (retryable, retry_after) = match &err {
                    StepError::Retryable { retry_after, .. } => (true, *retry_after),
                    StepError::Fatal(_) => (false, None),
                };
                pb::task_result::Outcome::Error(pb::TaskError {
                    message: err.to_string(),
                    retryable,
                    retry_after: retry_after.map(|d| prost_types::Duration {
                        seconds: d.as_secs() as i64,
                        nanos: d.subsec_nanos() as i32,
                    }),
                    release: false,
                })
            }
        };
        pb::TaskResult {
            task_id: task.task_id.clone(),
            lease_token: task.lease_token.clone(),
            outcome: Some(outcome),
        }
    }

    async fn report_loop(self, mut rx: mpsc::UnboundedReceiver<pb::TaskResult>) {
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                _ = self.inner.reporter_stop.cancelled() => rx.try_recv().ok(),
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < 500 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.send_results(batch).await;
        }
        self.inner.reporter_finished.store(true, Ordering::SeqCst);
        self.inner.reporter_done.notify_waiters();
    }

    /// Sends a batch, retrying transport errors; a result the scheduler refuses (stale
    /// lease: the task was handed to someone else) is only logged.
    async fn send_results(&self, batch: Vec<pb::TaskResult>) {
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=20 {
            let mut client = self.inner.client.clone();
            let request = pb::ReportTaskResultsRequest {
                worker_id: self.inner.config.worker_id.clone(),
                results: batch.clone(),
            };
            match client.report_task_results(request).await {
                Ok(resp) => {
                    for ack in resp.into_inner().acks.into_iter().filter(|a| !a.accepted) {
                        tracing::info!(task_id = %ack.task_id, reason = %ack.reason, "result refused");
                    }
                    return;
                }
                Err(status) => {
                    tracing::warn!(attempt, code = ?status.code(), message = status.message(), "reporting results failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::error!(
            results = batch.len(),
            "giving up reporting results; their leases will expire and they will retry"
        );
    }

    async fn heartbeat_loop(self) {
        let every = self.inner.config.heartbeat_every;
        let extend = (every * 5).max(Duration::from_secs(3));
        loop {
            tokio::time::sleep(every).await;
            let leases: Vec<pb::TaskLease> = self
                .in_flight()
                .iter()
                .map(|(id, f)| pb::TaskLease { task_id: id.clone(), lease_token: f.lease_token.clone() })
                .collect();
            if leases.is_empty() {
                continue;
            }
            let request = pb::HeartbeatTasksRequest {
                worker_id: self.inner.config.worker_id.clone(),
                leases,
                extend_by: Some(prost_types::Duration {
                    seconds: extend.as_secs() as i64,
                    nanos: extend.subsec_nanos() as i32,
                }),
            };
            let mut client = self.inner.client.clone();
            match client.heartbeat_tasks(request).await {
                Ok(resp) => {
                    for hb in resp.into_inner().heartbeats {
                        let status =
                            pb::LeaseStatus::try_from(hb.status).unwrap_or(pb::LeaseStatus::Unspecified);
                        if matches!(status, pb::LeaseStatus::Cancelled | pb::LeaseStatus::Lost)
                            && let Some(f) = self.take(&hb.task_id)
                        {
                            tracing::info!(task_id = %hb.task_id, ?status, "stopping task");
                            f.abort.abort();
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat failed")
                }
            }
        }
    }

    /// Stops polling, lets in-flight tasks finish within `timeout` (default: the configured
    /// drain timeout), hands the rest back, flushes results. Returns (finished, handed back).
    /// Idempotent: a second call waits for the first and returns its numbers.
    pub async fn drain(&self, timeout: Option<Duration>) -> (u32, u32) {
        let this = self.clone();
        *self
            .inner
            .drained
            .get_or_init(|| async move {
                this.inner.draining.cancel();
                let at_start = this.in_flight().len() as u32;
                let timeout = timeout.unwrap_or(this.inner.config.drain_timeout);
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    // Register before checking, so a task leaving in between still wakes us.
                    let left = this.inner.task_left.notified();
                    if this.in_flight().is_empty() {
                        break;
                    }
                    tokio::select! {
                        _ = left => {}
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                let leftovers: Vec<(String, InFlight)> = this.in_flight().drain().collect();
                let leftover_count = leftovers.len() as u32;
                if leftover_count > 0 {
                    tracing::warn!(
                        handed_back = leftover_count,
                        "drain timeout reached; handing unfinished tasks back"
                    );
                }
                let handed_back = leftover_count;
                for (task_id, f) in leftovers {
                    f.abort.abort();
                    let _ = this.inner.results.send(pb::TaskResult {
                        task_id,
                        lease_token: f.lease_token,
                        outcome: Some(pb::task_result::Outcome::Error(pb::TaskError {
                            message: "worker drained before the step finished".into(),
                            retryable: true,
                            retry_after: None,
                            release: true,
                        })),
                    });
                }
                // Wait for the poll in flight (at most POLL_WAIT): whatever it brings is handed
                // back through the reporter, which must therefore still be running.
                if this.inner.polling.load(Ordering::SeqCst) {
                    let stopped = this.inner.poll_stopped.cancelled();
                    if tokio::time::timeout(POLL_WAIT + Duration::from_secs(5), stopped).await.is_err() {
                        tracing::warn!(
                            "the last poll did not return; its tasks come back when their leases expire"
                        );
                    }
                }
                let handed_back = handed_back + this.inner.released_while_draining.load(Ordering::Relaxed);
                let done = this.inner.reporter_done.notified();
                this.inner.reporter_stop.cancel();
                if !this.inner.reporter_finished.load(Ordering::SeqCst) {
                    let _ = tokio::time::timeout(Duration::from_secs(30), done).await;
                }
                (at_start.saturating_sub(leftover_count), handed_back)
            })
            .await
    }

    /// LLM response cache (hits, misses) of this process.
    pub fn llm_cache(&self) -> (u64, u64) {
        let stats = self.inner.executor.llm_stats();
        (stats.hits.load(Ordering::Relaxed), stats.misses.load(Ordering::Relaxed))
    }

    /// Capacity and load.
    pub fn status(&self) -> pb::GetStatusResponse {
        let in_flight = self.in_flight();
        let mut by_kind: HashMap<String, u32> = HashMap::new();
        for f in in_flight.values() {
            *by_kind.entry(f.kind.clone()).or_default() += 1;
        }
        pb::GetStatusResponse {
            worker_id: self.inner.config.worker_id.clone(),
            version: aura_common::VERSION.to_string(),
            capacity: self.inner.config.concurrency as u32,
            in_flight: in_flight.len() as u32,
            in_flight_by_kind: by_kind,
            draining: self.inner.draining.is_cancelled(),
            succeeded: self.inner.succeeded.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
        }
    }
}

fn release(task: &pb::Task, why: &str) -> pb::TaskResult {
    pb::TaskResult {
        task_id: task.task_id.clone(),
        lease_token: task.lease_token.clone(),
        outcome: Some(pb::task_result::Outcome::Error(pb::TaskError {
            message: why.to_string(),
            retryable: true,
            retry_after: None,
            release: true,
        })),
    }
}
