//! Runs. A run is a queue flow: the run record is the flow hash, each step a job
//! `<run_id>.<step_id>`, so starting a run, recording a step and releasing its dependents are
//! each one atomic script.

use std::{collections::HashMap, time::Duration};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::{Engine, EngineError, ids, spec::WorkflowSpec, tasks::LifecycleEvent};

/// Run states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Accepted, no step claimed yet.
    Pending,
    /// A step was claimed.
    Running,
    /// All steps done.
    Succeeded,
    /// A step failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunState {
    fn parse(s: &str) -> Result<Self, EngineError> {
        Ok(match s {
            "pending" => RunState::Pending,
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            other => return Err(EngineError::Corrupt(format!("run state {other:?}"))),
        })
    }

    /// True for succeeded, failed and cancelled.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    }
}

/// Step states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    /// Waiting for dependencies.
    Blocked,
    /// Ready or delayed, never attempted.
    Queued,
    /// Leased by a worker.
    Running,
    /// Backing off before another attempt.
    Retrying,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Cancelled with its run.
    Cancelled,
    /// Skipped: a dependency failed with continue-on-failure.
    Skipped,
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct StepView {
    /// Step id.
    pub step_id: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: StepState,
    /// Attempts started.
    pub attempts: u32,
    /// Output once succeeded.
    pub output: Option<Json>,
    /// Last error.
    pub error: String,
    /// Last claim time, ms (0 if never).
    pub started_at_ms: u64,
    /// Finish time, ms (0 if not finished).
    pub finished_at_ms: u64,
}

/// A run as clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    /// Run id.
    pub run_id: String,
    /// Workflow name.
    pub workflow_name: String,
    /// Workflow version.
    pub workflow_version: u32,
    /// State.
    pub state: RunState,
    /// Input.
    pub input: Map<String, Json>,
    /// Steps in spec order (empty in listings).
    pub steps: Vec<StepView>,
    /// Terminal steps' outputs by step id, once succeeded.
    pub output: Option<Json>,
    /// Why it failed or was cancelled.
    pub error: String,
    /// Times, ms (0 when not reached).
    pub created_at_ms: u64,
    /// First claim.
    pub started_at_ms: u64,
    /// End.
    pub finished_at_ms: u64,
    /// Priority.
    pub priority: u16,
    /// Idempotency key.
    pub idempotency_key: String,
}

/// A request to start a run.
#[derive(Clone, Debug, Default)]
pub struct StartRequest {
    /// Workflow.
    pub workflow_name: String,
    /// Version, 0 = latest.
    pub workflow_version: u32,
    /// Input object.
    pub input: Map<String, Json>,
    /// Optional idempotency key.
    pub idempotency_key: String,
    /// 0..=1000.
    pub priority: i32,
    /// Start delay.
    pub delay: Duration,
    /// Fair-dispatch key ('' for none).
    pub concurrency_key: String,
    /// W3C trace context of the caller (`traceparent`, ...), handed to every step's task so
    /// its span joins the caller's trace. Opaque here; empty when traces are off.
    pub trace_context: HashMap<String, String>,
}

/// What starting a run returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Started {
    /// The run id (existing one for a repeated idempotency key).
    pub run_id: String,
    /// False for a repeated idempotency key.
    pub created: bool,
    /// A created run as it stands at creation, built from what the start script returned
    /// (so `StartRun` answers without reading the run back). `None` for an existing run:
    /// read it.
    pub view: Option<RunView>,
}

/// Listing filters.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this workflow.
    pub workflow_name: String,
    /// Only this state.
    pub state: Option<RunState>,
    /// Created at or after, ms.
    pub created_after_ms: u64,
    /// Created before, ms (0: no bound).
    pub created_before_ms: u64,
}

/// Stored with every flow: which workflow version the run executes.
#[derive(Serialize, Deserialize)]
pub(crate) struct FlowMeta {
    pub w: String,
    pub v: u32,
    /// Trace context of the `StartRun` (absent when traces are off: no bytes spent).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub t: HashMap<String, String>,
}

/// A run checked and placed, ready for its start script (its flow travels beside it, moved
/// into the script call rather than copied).
struct PreparedRun {
    req: StartRequest,
    wf: std::sync::Arc<crate::registry::Workflow>,
    partition: usize,
}

impl Engine {
    /// Starts one run.
    pub async fn start_run(&self, req: StartRequest) -> Result<Started, EngineError> {
        let (run, flow) = self.prepare_run(req).await?;
        let start = self.queue.start_flow(run.partition, flow).await?;
        let (started, event) = finish_start(&run, start);
        if let Some(event) = event {
            self.emit(vec![event]).await;
        }
        Ok(started)
    }

    /// Starts many runs: each is checked on its own, then the valid ones go to Redis with
    /// one script call per partition and [`aura_queue::START_FLOWS_PER_CALL`] runs, and
    /// their events are published in one batch. One result per request, in order.
    pub async fn start_runs(&self, reqs: Vec<StartRequest>) -> Vec<Result<Started, EngineError>> {
        let prepared = futures::future::join_all(reqs.into_iter().map(|r| self.prepare_run(r))).await;
        let partitions = self.queue.keys().partitions();
        // Per partition, in order: the runs (with their request index), and their flows.
        let mut runs_by_partition: Vec<Vec<(usize, PreparedRun)>> =
            (0..partitions).map(|_| Vec::new()).collect();
        let mut flows_by_partition: Vec<Vec<aura_queue::NewFlow>> =
            (0..partitions).map(|_| Vec::new()).collect();
        let mut out: Vec<Option<Result<Started, EngineError>>> = Vec::with_capacity(prepared.len());
        for (i, run) in prepared.into_iter().enumerate() {
            match run {
                Ok((run, flow)) => {
                    flows_by_partition[run.partition].push(flow);
                    runs_by_partition[run.partition].push((i, run));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let calls = runs_by_partition
            .into_iter()
            .zip(flows_by_partition)
            .enumerate()
            .filter(|(_, (runs, _))| !runs.is_empty())
            .map(|(partition, (runs, flows))| async move {
                (runs, self.queue.start_flows(partition, flows).await)
            });
        let mut events = Vec::new();
        for (runs, starts) in futures::future::join_all(calls).await {
            match starts {
                Ok(starts) => {
                    for ((i, run), start) in runs.iter().zip(starts) {
                        let (started, event) = finish_start(run, start);
                        events.extend(event);
                        out[*i] = Some(Ok(started));
                    }
                }
                Err(err) => {
                    let err = EngineError::from(err);
                    for (i, _) in &runs {
                        out[*i] = Some(Err(err.duplicate()));
                    }
                }
            }
        }
        self.emit(events).await;
        out.into_iter().map(|r| r.expect("every run has a result")).collect()
    }

    async fn prepare_run(
        &self,
        req: StartRequest,
    ) -> Result<(PreparedRun, aura_queue::NewFlow), EngineError> {
        if req.workflow_name.is_empty() {
            return Err(EngineError::invalid("workflow_name", "is required"));
        }
        crate::validate::start_options(req.priority, &req.idempotency_key, &req.concurrency_key, req.delay)?;
        let wf = self.registry.get(&req.workflow_name, req.workflow_version).await?;
        let keys = self.queue.keys();
        // A concurrency limit is counted in one place: every run of such a workflow lives in
        // the workflow's partition. Otherwise runs spread, and duplicates of an idempotency
        // key meet in its partition.
        let partition = if wf.spec.max_concurrent_runs > 0 {
            keys.partition_of(&wf.spec.name)
        } else if req.idempotency_key.is_empty() {
            rand::random_range(0..keys.partitions())
        } else {
            keys.partition_of(&req.idempotency_key)
        };
        let run_id = ids::run_id(partition);
        let spec = &wf.spec;
        let input = &req.input;
        let dependents = spec.dependents();
        let jobs = spec
            .steps
            .iter()
            .map(|step| aura_queue::FlowJob {
                id: ids::task_id(&run_id, &step.id),
                queue: WorkflowSpec::queue_of(step),
                payload: step.id.clone(),
                parents: step.depends_on.iter().map(|d| ids::task_id(&run_id, d)).collect(),
                dependents: dependents
                    .get(step.id.as_str())
                    .into_iter()
                    .flatten()
                    .map(|d| ids::task_id(&run_id, d))
                    .collect(),
                retry: spec.retry_policy(step),
                lease: spec.timeout(step),
                continue_on_failure: step.continue_on_failure,
                release_delay: if step.kind == "delay" {
                    Duration::from_secs_f64(step.config.get("seconds").and_then(Json::as_f64).unwrap_or(0.0))
                } else {
                    Duration::ZERO
                },
            })
            .collect();
        let meta = serde_json::to_string(&FlowMeta {
            w: spec.name.clone(),
            v: wf.version,
            t: req.trace_context.clone(),
        })
        .expect("meta serialises");
        let flow = aura_queue::NewFlow {
            id: run_id.clone(),
            idempotency_key: req.idempotency_key.clone(),
            idempotency_ttl: self.config.idempotency_ttl,
            meta,
            input: serde_json::to_string(input).expect("a JSON map serialises"),
            delay: req.delay,
            priority: req.priority as u16,
            index: spec.name.clone(),
            concurrency_key: req.concurrency_key.clone(),
            timeout: Duration::from_millis(spec.timeout_ms),
            concurrency_limit: spec.max_concurrent_runs,
            jobs,
        };
        Ok((PreparedRun { req, wf, partition }, flow))
    }

    fn partition_of(&self, run_id: &str) -> Result<usize, EngineError> {
        ids::partition_of_run(run_id, self.queue.keys().partitions())
            .ok_or_else(|| EngineError::invalid("run_id", format!("{run_id:?} is not an AURA run id")))
    }

    /// Reads a run with all its steps.
    pub async fn get_run(&self, run_id: &str) -> Result<RunView, EngineError> {
        let p = self.partition_of(run_id)?;
        let pre = self.queue.keys().partition(p).to_string();
        let mut conn = self.queue.conn();
        let flow: HashMap<String, String> = conn.hgetall(format!("{pre}f:{run_id}")).await?;
        if flow.is_empty() {
            return Err(EngineError::NotFound(format!("run {run_id:?} not found")));
        }
        let mut run = summary(run_id, &flow)?;
        let wf = self.registry.get(&run.workflow_name, run.workflow_version).await?;
        let mut pipe = redis::pipe();
        for step in &wf.spec.steps {
            pipe.hmget(
                format!("{pre}j:{}", ids::task_id(run_id, &step.id)),
                &["s", "a", "r", "e", "st", "ft"],
            );
        }
        type Fields =
            (Option<String>, Option<u32>, Option<String>, Option<String>, Option<u64>, Option<String>);
        let rows: Vec<Fields> = pipe.query_async(&mut conn).await?;
        let mut outputs = Map::new();
        let terminal = wf.spec.terminal_steps();
        for (step, (s, a, r, e, st, ft)) in wf.spec.steps.iter().zip(rows) {
            let attempts = a.unwrap_or(0);
            let state = match s.as_deref() {
                Some("b") => StepState::Blocked,
                Some("w") => StepState::Queued,
                Some("d") if attempts > 0 => StepState::Retrying,
                Some("d") => StepState::Queued,
                Some("a") => StepState::Running,
                Some("c") => StepState::Succeeded,
                Some("f") => StepState::Failed,
                Some("x") => StepState::Cancelled,
                Some("k") => StepState::Skipped,
                other => return Err(EngineError::Corrupt(format!("step state {other:?}"))),
            };
            let output = r.filter(|r| !r.is_empty()).and_then(|r| serde_json::from_str::<Json>(&r).ok());
            if state == StepState::Succeeded
                && terminal.contains(&step.id.as_str())
                && let Some(out) = &output
            {
                outputs.insert(step.id.clone(), out.clone());
            }
            run.steps.push(StepView {
                step_id: step.id.clone(),
                kind: step.kind.clone(),
                state,
                attempts,
                output,
                error: e.unwrap_or_default(),
                started_at_ms: st.unwrap_or(0),
                finished_at_ms: ft.and_then(|f| f.parse().ok()).unwrap_or(0),
            });
        }
        if run.state == RunState::Succeeded {
            run.output = Some(Json::Object(outputs));
        }
        Ok(run)
    }

    /// Lists runs newest first. `cursor` is the previous page's token ('' for the first).
    /// With a state filter a page may hold fewer than `limit` runs; follow the token.
    pub async fn list_runs(
        &self,
        filter: &ListFilter,
        cursor: &str,
        limit: usize,
    ) -> Result<(Vec<RunView>, String), EngineError> {
        let (cursor_ms, cursor_id) = if cursor.is_empty() {
            (u64::MAX, String::new())
        } else {
            let (ms, id) =
                cursor.split_once(':').ok_or_else(|| EngineError::invalid("page_token", "malformed"))?;
            (ms.parse().map_err(|_| EngineError::invalid("page_token", "malformed"))?, id.to_string())
        };
        let max = if filter.created_before_ms > 0 {
            cursor_ms.min(filter.created_before_ms - 1)
        } else {
            cursor_ms
        };
        let max_arg = if max == u64::MAX { "+inf".to_string() } else { max.to_string() };
        let keys = self.queue.keys();
        let index = if filter.workflow_name.is_empty() {
            "runs".to_string()
        } else {
            format!("runs:{}", filter.workflow_name)
        };
        let mut candidates: Vec<(u64, String, usize)> = Vec::new();
        for p in 0..keys.partitions() {
            let mut conn = self.queue.conn();
            let entries: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(format!("{}{index}", keys.partition(p)))
                .arg(&max_arg)
                .arg(filter.created_after_ms)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit + 1 + 64)
                .query_async(&mut conn)
                .await?;
            for (id, score) in entries {
                let ms = score as u64;
                // Skip what the previous page already returned (same ms, id not smaller).
                if ms == cursor_ms && !cursor_id.is_empty() && id >= cursor_id {
                    continue;
                }
                candidates.push((ms, id, p));
            }
        }
        candidates.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        let more = candidates.len() > limit;
        candidates.truncate(limit);
        let next = if more {
            candidates.last().map(|(ms, id, _)| format!("{ms}:{id}")).unwrap_or_default()
        } else {
            String::new()
        };
        let mut runs = Vec::new();
        for (_, id, p) in candidates {
            let mut conn = self.queue.conn();
            let flow: HashMap<String, String> = conn.hgetall(format!("{}f:{id}", keys.partition(p))).await?;
            if flow.is_empty() {
                continue;
            }
            let run = summary(&id, &flow)?;
            if filter.state.is_none_or(|s| s == run.state) {
                runs.push(run);
            }
        }
        Ok((runs, next))
    }

    /// Cancels a run. Cancelling a cancelled run is a no-op; a finished one cannot be.
    pub async fn cancel_run(&self, run_id: &str, reason: &str) -> Result<RunView, EngineError> {
        let p = self.partition_of(run_id)?;
        let reason = if reason.is_empty() { "cancelled by request" } else { reason };
        let (state, cancelled) = self.queue.cancel_flow(p, run_id, reason).await?;
        match state.as_str() {
            "" => return Err(EngineError::NotFound(format!("run {run_id:?} not found"))),
            "succeeded" | "failed" => {
                return Err(EngineError::FailedPrecondition(format!(
                    "run {run_id:?} already {state}; it cannot be cancelled"
                )));
            }
            _ => {}
        }
        let run = self.get_run(run_id).await?;
        // An already-cancelled run comes back with nothing newly cancelled: no second event.
        if !cancelled.is_empty() {
            self.emit(vec![LifecycleEvent::run(
                run_id,
                &run.workflow_name,
                "run.cancelled",
                json!({"reason": reason}),
            )])
            .await;
        }
        Ok(run)
    }
}

/// What a started (or repeated) run answers, built from what its start script returned.
fn finish_start(run: &PreparedRun, start: aura_queue::FlowStart) -> (Started, Option<LifecycleEvent>) {
    let (req, wf) = (&run.req, &run.wf);
    let (spec, input) = (&wf.spec, &req.input);
    let view = start.created.then(|| RunView {
        run_id: start.flow_id.clone(),
        workflow_name: spec.name.clone(),
        workflow_version: wf.version,
        state: RunState::Pending,
        input: input.clone(),
        steps: spec
            .steps
            .iter()
            .map(|step| StepView {
                step_id: step.id.clone(),
                kind: step.kind.clone(),
                // As start_flow sets them: roots ready (or delayed: also "queued")
                // unless the run waits for its workflow's concurrency limit.
                state: if start.admitted && step.depends_on.is_empty() {
                    StepState::Queued
                } else {
                    StepState::Blocked
                },
                attempts: 0,
                output: None,
                error: String::new(),
                started_at_ms: 0,
                finished_at_ms: 0,
            })
            .collect(),
        output: None,
        error: String::new(),
        created_at_ms: start.created_at_ms,
        started_at_ms: 0,
        finished_at_ms: 0,
        priority: req.priority as u16,
        idempotency_key: req.idempotency_key.clone(),
    });
    let event = start.created.then(|| {
        LifecycleEvent::run(&start.flow_id, &spec.name, "run.queued", json!({"workflow_version": wf.version}))
    });
    (Started { run_id: start.flow_id, created: start.created, view }, event)
}

fn summary(run_id: &str, flow: &HashMap<String, String>) -> Result<RunView, EngineError> {
    let get = |k: &str| flow.get(k).cloned().unwrap_or_default();
    let num = |k: &str| flow.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let meta: FlowMeta =
        serde_json::from_str(&get("meta")).map_err(|e| EngineError::Corrupt(format!("run meta: {e}")))?;
    let input = match serde_json::from_str::<Json>(&get("in")) {
        Ok(Json::Object(map)) => map,
        _ => Map::new(),
    };
    Ok(RunView {
        run_id: run_id.to_string(),
        workflow_name: meta.w,
        workflow_version: meta.v,
        state: RunState::parse(&get("state"))?,
        input,
        steps: Vec::new(),
        output: None,
        error: get("err"),
        created_at_ms: num("ts"),
        started_at_ms: num("st"),
        finished_at_ms: num("ft"),
        priority: num("p") as u16,
        idempotency_key: get("idem"),
    })
}
