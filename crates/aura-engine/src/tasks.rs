//! The task API (what workers call) and the lease reaper. Every run and step transition
//! is published as an event on `runs.<run_id>` and `workflows.<name>`, after the atomic
//! state change it describes.

use std::{collections::HashMap, time::Duration};

use serde_json::{Map, Value as Json, json};
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError, ids, runs::FlowMeta};

/// One step attempt handed to a worker.
#[derive(Clone, Debug)]
pub struct Task {
    /// `<run_id>.<step_id>`.
    pub task_id: String,
    /// Run.
    pub run_id: String,
    /// Step.
    pub step_id: String,
    /// Kind.
    pub kind: String,
    /// Step config.
    pub config: Map<String, Json>,
    /// Run input.
    pub input: Map<String, Json>,
    /// Outputs of the direct dependencies, by step id.
    pub dependency_outputs: Map<String, Json>,
    /// Attempt, from 1.
    pub attempt: u32,
    /// Fencing token.
    pub lease_token: String,
    /// Lease deadline, ms.
    pub lease_deadline_ms: u64,
    /// Queue.
    pub queue: String,
    /// Workflow.
    pub workflow_name: String,
    /// Version.
    pub workflow_version: u32,
    /// Attempt timeout.
    pub timeout: Duration,
    /// W3C trace context of the `StartRun` that caused the run (empty when traces are off).
    pub trace_context: HashMap<String, String>,
}

/// A worker's report on one task.
#[derive(Clone, Debug)]
pub struct TaskReport {
    /// Task id.
    pub task_id: String,
    /// Lease token.
    pub lease_token: String,
    /// Output, or the error.
    pub outcome: Result<Json, TaskFailure>,
}

/// A failed attempt.
#[derive(Clone, Debug)]
pub struct TaskFailure {
    /// Message recorded on the step.
    pub message: String,
    /// False skips the remaining attempts.
    pub retryable: bool,
    /// Minimum wait before the retry.
    pub retry_after: Option<Duration>,
    /// Handed back untried (worker draining): ready again at once, attempt not counted.
    pub release: bool,
}

/// Whether a report was recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    /// Task id.
    pub task_id: String,
    /// Recorded.
    pub accepted: bool,
    /// Why not.
    pub reason: String,
}

/// Heartbeat answers.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseStatus {
    /// Extended to this deadline (ms).
    Extended(u64),
    /// Run cancelled: stop.
    Cancelled,
    /// Lease gone: stop.
    Lost,
}

/// An event about a run, republished on `workflows.<workflow>` after the transition. (The
/// run's own topic, `runs.<run_id>`, is written atomically by the queue scripts.)
#[derive(Clone, Debug)]
pub struct LifecycleEvent {
    workflow: String,
    event_type: &'static str,
    payload: Json,
}

impl LifecycleEvent {
    pub(crate) fn run(run_id: &str, workflow: &str, event_type: &'static str, extra: Json) -> Self {
        let mut payload = json!({"run_id": run_id, "workflow": workflow});
        if let (Json::Object(p), Json::Object(e)) = (&mut payload, extra) {
            p.extend(e);
        }
        LifecycleEvent { workflow: workflow.into(), event_type, payload }
    }

    fn step(run_id: &str, workflow: &str, step_id: &str, event_type: &'static str, extra: Json) -> Self {
        let mut event = Self::run(run_id, workflow, event_type, extra);
        event.payload["step_id"] = Json::String(step_id.into());
        event
    }
}

/// Most tasks per poll.
pub const MAX_TASKS_PER_POLL: usize = 1000;

impl Engine {
    /// Hands lifecycle events to this engine's emitter, which republishes them on
    /// `workflows.<name>` and counts run outcomes, in order, off the caller's path (see
    /// [`run_emitter`]). Waits only when the emitter is far behind (backpressure).
    pub(crate) async fn emit(&self, events: Vec<LifecycleEvent>) {
        if events.is_empty() {
            return;
        }
        if self.emitter.send(events).await.is_err() {
            tracing::warn!("the lifecycle event emitter has stopped; events not republished");
        }
    }

    /// Long-polls for up to `max` tasks from `queues`, waiting up to `wait`.
    pub async fn poll_tasks(
        &self,
        worker_id: &str,
        queues: &[String],
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Task>, EngineError> {
        crate::validate::poll(queues, max)?;
        let claimed = self.queue.claim_blocking(queues, max, wait, cancel).await?;
        let mut tasks = Vec::with_capacity(claimed.len());
        let mut events = Vec::new();
        let mut meta_cache: HashMap<String, FlowMeta> = HashMap::new();
        for job in claimed {
            let Some((run_id, step_id)) = ids::split_task_id(&job.lease.id) else {
                tracing::warn!(task_id = %job.lease.id, "claimed a job that is not a run step; dead-lettering it");
                self.queue
                    .fail(vec![aura_queue::Failure {
                        lease: job.lease.clone(),
                        error: "not an AURA run step".into(),
                        retryable: false,
                        retry_after: None,
                    }])
                    .await?;
                continue;
            };
            let meta = match meta_cache.get(&job.flow) {
                Some(m) => FlowMeta { w: m.w.clone(), v: m.v, t: m.t.clone() },
                None => serde_json::from_str::<FlowMeta>(&job.flow_meta)
                    .map_err(|e| EngineError::Corrupt(format!("run meta: {e}")))?,
            };
            let wf = self.registry.get(&meta.w, meta.v).await?;
            let Some(step) = wf.spec.steps.iter().find(|s| s.id == step_id) else {
                return Err(EngineError::Corrupt(format!("step {step_id:?} not in workflow {}", meta.w)));
            };
            let input = match serde_json::from_str::<Json>(&job.flow_input) {
                Ok(Json::Object(m)) => m,
                _ => Map::new(),
            };
            let dependency_outputs = job
                .parent_results
                .iter()
                .filter_map(|(pid, result)| {
                    let (_, pstep) = ids::split_task_id(pid)?;
                    Some((pstep.to_string(), serde_json::from_str(result).unwrap_or(Json::Null)))
                })
                .collect();
            if job.flow_started {
                events.push(LifecycleEvent::run(run_id, &meta.w, "run.started", json!({})));
            }
            events.push(LifecycleEvent::step(
                run_id,
                &meta.w,
                step_id,
                "step.started",
                json!({
                    "attempt": job.attempt,
                    "worker_id": worker_id,
                    "kind": step.kind,
                    "queue_wait_ms": job.queue_wait_ms,
                }),
            ));
            tasks.push(Task {
                task_id: job.lease.id.clone(),
                run_id: run_id.to_string(),
                step_id: step_id.to_string(),
                kind: step.kind.clone(),
                config: step.config.clone(),
                input,
                dependency_outputs,
                attempt: job.attempt,
                lease_token: job.lease.token.clone(),
                lease_deadline_ms: job.deadline_ms,
                queue: job.queue.clone(),
                workflow_name: meta.w.clone(),
                workflow_version: meta.v,
                timeout: wf.spec.timeout(step),
                trace_context: meta.t.clone(),
            });
            meta_cache.insert(job.flow.clone(), meta);
        }
        self.emit(events).await;
        Ok(tasks)
    }

    fn lease_of(&self, task_id: &str, token: &str) -> Result<aura_queue::Lease, String> {
        let (run_id, _) = ids::split_task_id(task_id).ok_or("unknown task")?;
        let partition =
            ids::partition_of_run(run_id, self.queue.keys().partitions()).ok_or("unknown task")?;
        Ok(aura_queue::Lease { partition, id: task_id.to_string(), token: token.to_string() })
    }

    /// Records task outcomes in two batched script calls (completions, failures).
    pub async fn report_tasks(&self, reports: Vec<TaskReport>) -> Result<Vec<Ack>, EngineError> {
        let mut acks: Vec<Ack> = reports
            .iter()
            .map(|r| Ack { task_id: r.task_id.clone(), accepted: false, reason: String::new() })
            .collect();
        let mut completions = Vec::new();
        let mut failures = Vec::new();
        let mut releases = Vec::new();
        for (i, report) in reports.into_iter().enumerate() {
            let lease = match self.lease_of(&report.task_id, &report.lease_token) {
                Ok(lease) => lease,
                Err(reason) => {
                    acks[i].reason = reason.to_string();
                    continue;
                }
            };
            match report.outcome {
                Ok(output) => {
                    completions.push((i, aura_queue::Completion { lease, result: output.to_string() }))
                }
                Err(f) if f.release => releases.push((i, lease)),
                Err(f) => failures.push((
                    i,
                    aura_queue::Failure {
                        lease,
                        error: f.message,
                        retryable: f.retryable,
                        retry_after: f.retry_after,
                    },
                )),
            }
        }
        let mut events = Vec::new();
        // Completions (the common case) come back with their run's workflow name; only
        // failures need it read.
        let runs: Vec<(usize, String)> = failures
            .iter()
            .map(|(_, f)| &f.lease)
            .filter_map(|l| ids::split_task_id(&l.id).map(|(run, _)| (l.partition, run.to_string())))
            .collect();
        let workflows = if runs.is_empty() { HashMap::new() } else { self.workflows_of(&runs).await };
        let name_of = |run_id: &str| workflows.get(run_id).cloned().unwrap_or_default();
        if !completions.is_empty() {
            let (idx, items): (Vec<usize>, Vec<_>) = completions.into_iter().unzip();
            let outcomes = self.queue.complete(items.clone()).await?;
            for ((i, item), outcome) in idx.into_iter().zip(items).zip(outcomes) {
                match outcome {
                    aura_queue::CompleteOutcome::Recorded { ready, flow_state, flow_index: wf } => {
                        acks[i].accepted = true;
                        let (run_id, step_id) = ids::split_task_id(&item.lease.id).unwrap_or_default();
                        events.push(LifecycleEvent::step(run_id, &wf, step_id, "step.succeeded", json!({})));
                        for dep in ready {
                            let (_, dep_step) = ids::split_task_id(&dep).unwrap_or_default();
                            events.push(LifecycleEvent::step(
                                run_id,
                                &wf,
                                dep_step,
                                "step.queued",
                                json!({}),
                            ));
                        }
                        if flow_state == "succeeded" {
                            events.push(LifecycleEvent::run(run_id, &wf, "run.succeeded", json!({})));
                        }
                    }
                    aura_queue::CompleteOutcome::Refused(reason) => acks[i].reason = reason,
                }
            }
        }
        if !failures.is_empty() {
            let (idx, items): (Vec<usize>, Vec<_>) = failures.into_iter().unzip();
            let outcomes = self.queue.fail(items.clone()).await?;
            for ((i, item), outcome) in idx.into_iter().zip(items).zip(outcomes) {
                if let aura_queue::FailOutcome::Refused(reason) = &outcome {
                    acks[i].reason = reason.clone();
                    continue;
                }
                acks[i].accepted = true;
                let wf = name_of(ids::split_task_id(&item.lease.id).unwrap_or_default().0);
                events.extend(failure_events(&item.lease.id, &wf, &item.error, outcome));
            }
        }
        if !releases.is_empty() {
            let (idx, leases): (Vec<usize>, Vec<_>) = releases.into_iter().unzip();
            for (i, released) in idx.into_iter().zip(self.queue.release(leases).await?) {
                acks[i].accepted = released;
                if !released {
                    acks[i].reason = "stale lease".into();
                }
            }
        }
        self.emit(events).await;
        Ok(acks)
    }

    /// The workflow name of each run, one pipelined round trip per partition (a report of
    /// 256 results must not cost 256 sequential reads). Unknown runs map to ''.
    async fn workflows_of(&self, runs: &[(usize, String)]) -> HashMap<String, String> {
        let mut by_partition: HashMap<usize, Vec<&str>> = HashMap::new();
        for (p, run_id) in runs {
            let ids = by_partition.entry(*p).or_default();
            if !ids.contains(&run_id.as_str()) {
                ids.push(run_id);
            }
        }
        let mut out = HashMap::new();
        for (p, ids) in by_partition {
            let mut pipe = redis::pipe();
            for run_id in &ids {
                pipe.hget(format!("{}f:{run_id}", self.queue.keys().partition(p)), "ix");
            }
            let mut conn = self.queue.conn();
            let names: Vec<Option<String>> = pipe.query_async(&mut conn).await.unwrap_or_default();
            for (run_id, name) in ids.into_iter().zip(names) {
                out.insert(run_id.to_string(), name.unwrap_or_default());
            }
        }
        out
    }

    /// Extends leases; reports cancelled and lost ones.
    pub async fn heartbeat_tasks(
        &self,
        leases: Vec<(String, String)>,
        extend: Duration,
    ) -> Result<Vec<LeaseStatus>, EngineError> {
        let mut out = vec![LeaseStatus::Lost; leases.len()];
        let mut valid = Vec::new();
        for (i, (task_id, token)) in leases.iter().enumerate() {
            if let Ok(lease) = self.lease_of(task_id, token) {
                valid.push((i, lease));
            }
        }
        let (idx, items): (Vec<usize>, Vec<_>) = valid.into_iter().unzip();
        for (i, outcome) in idx.into_iter().zip(self.queue.heartbeat(items, extend).await?) {
            out[i] = match outcome {
                aura_queue::HeartbeatOutcome::Extended(d) => LeaseStatus::Extended(d),
                aura_queue::HeartbeatOutcome::Cancelled => LeaseStatus::Cancelled,
                aura_queue::HeartbeatOutcome::Lost => LeaseStatus::Lost,
            };
        }
        Ok(out)
    }

    /// Runs the lease reaper and retention until `shutdown`: every replica may run it; the
    /// scripts make concurrent reapers safe.
    pub async fn run_maintenance(&self, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.queue.reap(1000).await {
                Ok((reaped, timed_out)) => {
                    let mut events = Vec::new();
                    let runs: Vec<(usize, String)> = timed_out
                        .iter()
                        .cloned()
                        .chain(reaped.iter().filter_map(|r| {
                            ids::split_task_id(&r.id).map(|(run, _)| (r.partition, run.to_string()))
                        }))
                        .collect();
                    let workflows = self.workflows_of(&runs).await;
                    let name_of = |run_id: &str| workflows.get(run_id).cloned().unwrap_or_default();
                    for (_, run_id) in timed_out {
                        tracing::warn!(%run_id, "run timed out");
                        let wf = name_of(&run_id);
                        events.push(LifecycleEvent::run(
                            &run_id,
                            &wf,
                            "run.failed",
                            json!({"error": "run timed out"}),
                        ));
                    }
                    for r in reaped {
                        tracing::info!(task_id = %r.id, outcome = ?r.outcome, "lease expired; task handed back");
                        let Some((run_id, _)) = ids::split_task_id(&r.id) else { continue };
                        let wf = name_of(run_id);
                        events.extend(failure_events(&r.id, &wf, "lease expired", r.outcome));
                    }
                    self.emit(events).await;
                }
                Err(err) => tracing::debug!(%err, "reaper pass failed"),
            }
            if let Err(err) = self.queue.trim(&self.config.retention).await {
                tracing::debug!(%err, "retention pass failed");
            }
        }
    }
}

fn failure_events(
    task_id: &str,
    wf: &str,
    error: &str,
    outcome: aura_queue::FailOutcome,
) -> Vec<LifecycleEvent> {
    let (run_id, step_id) = ids::split_task_id(task_id).unwrap_or_default();
    let mut events = Vec::new();
    match outcome {
        aura_queue::FailOutcome::Retrying { at_ms } => {
            events.push(LifecycleEvent::step(
                run_id,
                wf,
                step_id,
                "step.retrying",
                json!({"error": error, "retry_at_ms": at_ms}),
            ));
        }
        aura_queue::FailOutcome::Dead { flow_state, .. } => {
            events.push(LifecycleEvent::step(run_id, wf, step_id, "step.failed", json!({"error": error})));
            match flow_state.as_str() {
                "failed" => events.push(LifecycleEvent::run(
                    run_id,
                    wf,
                    "run.failed",
                    json!({"error": format!("step {step_id} failed: {error}")}),
                )),
                "succeeded" => events.push(LifecycleEvent::run(run_id, wf, "run.succeeded", json!({}))),
                _ => {}
            }
        }
        aura_queue::FailOutcome::Refused(_) => {}
    }
    events
}

/// Most events published in one script call by the emitter.
const EMIT_BATCH: usize = 2000;

/// Republishes lifecycle events on `workflows.<name>` (an aggregate: best effort, and events
/// of concurrent runs interleave) and counts run outcomes for metrics, in the order they
/// were emitted. One task per engine, so a run's events keep their order on the aggregate
/// topic, yet no request waits for these writes: a run's own topic (`runs.<id>`) is already
/// written inside the transition scripts. Whatever queued up meanwhile goes out as one
/// batch: under load, one script call carries many events. A failure is logged, not
/// retried: the transitions these events describe are already committed.
pub(crate) async fn run_emitter(
    bus: aura_bus::Bus,
    conn: aura_common::redis::RedisConn,
    prefix: String,
    mut rx: tokio::sync::mpsc::Receiver<Vec<LifecycleEvent>>,
) {
    while let Some(mut events) = rx.recv().await {
        while events.len() < EMIT_BATCH {
            match rx.try_recv() {
                Ok(more) => events.extend(more),
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(events.len());
        let mut counts: HashMap<(String, String), u64> = HashMap::new();
        let now_ms = aura_queue::now_ms();
        for e in events {
            // A run counts as started when accepted (`run.queued`), not at its first claim.
            let counted = match e.event_type {
                "run.queued" => Some("started"),
                "run.succeeded" => Some("succeeded"),
                "run.failed" => Some("failed"),
                "run.cancelled" => Some("cancelled"),
                "step.retrying" => Some("retried"),
                _ => None,
            };
            if let Some(what) = counted {
                *counts.entry((e.workflow.clone(), what.to_string())).or_default() += 1;
            }
            // A step attempt's queue wait, per workflow and per step kind.
            if e.event_type == "step.started"
                && let (Some(kind), Some(wait)) =
                    (e.payload["kind"].as_str(), e.payload["queue_wait_ms"].as_u64())
            {
                let bucket = format!("w{}", crate::metrics::duration_bucket(wait));
                *counts.entry((e.workflow.clone(), bucket.clone())).or_default() += 1;
                let subject = format!("{}#{kind}", e.workflow);
                *counts.entry((subject.clone(), "started".to_string())).or_default() += 1;
                *counts.entry((subject, bucket)).or_default() += 1;
            }
            // A finished run's duration, from acceptance (its id's timestamp) to now.
            if matches!(e.event_type, "run.succeeded" | "run.failed")
                && let Some(created) = e.payload["run_id"].as_str().and_then(ids::created_ms)
            {
                let bucket = crate::metrics::duration_bucket(now_ms.saturating_sub(created));
                *counts.entry((e.workflow.clone(), format!("d{bucket}"))).or_default() += 1;
            }
            batch.push((format!("workflows.{}", e.workflow), e.event_type.to_string(), e.payload));
        }
        let publish = bus.publish_batch(&batch);
        let record = async {
            if counts.is_empty() { Ok(()) } else { crate::metrics::record(&conn, &prefix, &counts).await }
        };
        let (published, recorded) = tokio::join!(publish, record);
        if let Err(err) = published {
            tracing::warn!(%err, events = batch.len(), "publishing lifecycle events failed");
        }
        if let Err(err) = recorded {
            tracing::warn!(%err, "recording run metrics failed");
        }
    }
}
