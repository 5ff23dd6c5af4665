//! Protobuf ⇄ engine types. The only module where both meet.

use std::time::Duration;

use aura_engine::{
    EngineError,
    registry::Workflow,
    runs::{RunState, RunView, StartRequest, StepState, StepView},
    spec::{RetrySpec, StepDefaults, StepSpec, WorkflowSpec},
    tasks::Task,
};
use aura_proto::{json, v1 as pb};
use prost_types::Timestamp;

/// See the module docs.
pub fn duration_ms(field: &str, d: Option<&prost_types::Duration>) -> Result<u64, EngineError> {
    match d {
        None => Ok(0),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(EngineError::invalid(field, "must not be negative")),
        Some(d) => Ok(d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000),
    }
}

/// See the module docs.
pub fn to_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn ms_duration(ms: u64) -> Option<prost_types::Duration> {
    (ms > 0).then(|| to_duration(Duration::from_millis(ms)))
}

/// See the module docs.
pub fn timestamp(ms: u64) -> Option<Timestamp> {
    (ms > 0).then(|| Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// See the module docs.
pub fn timestamp_ms(t: Option<&Timestamp>) -> u64 {
    t.map_or(0, |t| (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
}

fn retry_from_pb(field: &str, r: Option<&pb::RetryPolicy>) -> Result<RetrySpec, EngineError> {
    let Some(r) = r else { return Ok(RetrySpec::default()) };
    Ok(RetrySpec {
        max_attempts: r.max_attempts,
        initial_backoff_ms: duration_ms(&format!("{field}.initial_backoff"), r.initial_backoff.as_ref())?,
        max_backoff_ms: duration_ms(&format!("{field}.max_backoff"), r.max_backoff.as_ref())?,
        multiplier: r.multiplier,
        jitter: r.jitter,
    })
}

fn retry_to_pb(r: &RetrySpec) -> Option<pb::RetryPolicy> {
    (*r != RetrySpec::default()).then(|| pb::RetryPolicy {
        max_attempts: r.max_attempts,
        initial_backoff: ms_duration(r.initial_backoff_ms),
        max_backoff: ms_duration(r.max_backoff_ms),
        multiplier: r.multiplier,
        jitter: r.jitter,
    })
}

/// See the module docs.
pub fn spec_from_pb(spec: Option<pb::WorkflowSpec>) -> Result<WorkflowSpec, EngineError> {
    let spec = spec.ok_or_else(|| EngineError::invalid("spec", "is required"))?;
    let defaults = spec.defaults.unwrap_or_default();
    let steps = spec
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("spec.steps[{i}]");
            Ok(StepSpec {
                id: s.id,
                kind: s.kind,
                config: s.config.as_ref().map(json::struct_to_map).unwrap_or_default(),
                depends_on: s.depends_on,
                retry: retry_from_pb(&format!("{field}.retry"), s.retry.as_ref())?,
                timeout_ms: duration_ms(&format!("{field}.timeout"), s.timeout.as_ref())?,
                continue_on_failure: s.continue_on_failure,
            })
        })
        .collect::<Result<_, EngineError>>()?;
    Ok(WorkflowSpec {
        name: spec.name,
        description: spec.description,
        steps,
        defaults: StepDefaults {
            retry: retry_from_pb("spec.defaults.retry", defaults.retry.as_ref())?,
            timeout_ms: duration_ms("spec.defaults.timeout", defaults.timeout.as_ref())?,
        },
        max_concurrent_runs: spec.max_concurrent_runs,
        timeout_ms: duration_ms("spec.timeout", spec.timeout.as_ref())?,
    })
}

/// See the module docs.
pub fn spec_to_pb(spec: &WorkflowSpec) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: spec.name.clone(),
        description: spec.description.clone(),
        steps: spec
            .steps
            .iter()
            .map(|s| pb::StepSpec {
                id: s.id.clone(),
                kind: s.kind.clone(),
                config: (!s.config.is_empty()).then(|| json::map_to_struct(&s.config)),
                depends_on: s.depends_on.clone(),
                retry: retry_to_pb(&s.retry),
                timeout: ms_duration(s.timeout_ms),
                continue_on_failure: s.continue_on_failure,
            })
            .collect(),
        defaults: (spec.defaults != StepDefaults::default()).then(|| pb::StepDefaults {
            retry: retry_to_pb(&spec.defaults.retry),
            timeout: ms_duration(spec.defaults.timeout_ms),
        }),
        max_concurrent_runs: spec.max_concurrent_runs,
        timeout: ms_duration(spec.timeout_ms),
    }
}

/// See the module docs.
pub fn workflow_to_pb(wf: &Workflow) -> pb::Workflow {
    pb::Workflow {
        spec: Some(spec_to_pb(&wf.spec)),
        version: wf.version,
        created_at: timestamp(wf.created_at_ms),
    }
}

/// See the module docs.
pub fn start_from_pb(req: pb::StartRunRequest) -> Result<StartRequest, EngineError> {
    Ok(StartRequest {
        workflow_name: req.workflow_name,
        workflow_version: req.workflow_version,
        input: req.input.as_ref().map(json::struct_to_map).unwrap_or_default(),
        idempotency_key: req.idempotency_key,
        priority: req.priority,
        delay: Duration::from_millis(duration_ms("delay", req.delay.as_ref())?),
        concurrency_key: req.concurrency_key,
        trace_context: Default::default(),
    })
}

/// See the module docs.
pub fn run_state_to_pb(s: RunState) -> pb::RunState {
    match s {
        RunState::Pending => pb::RunState::Pending,
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Cancelled => pb::RunState::Cancelled,
    }
}

/// See the module docs.
pub fn run_state_from_pb(s: i32) -> Result<Option<RunState>, EngineError> {
    Ok(match pb::RunState::try_from(s) {
        Ok(pb::RunState::Unspecified) => None,
        Ok(pb::RunState::Pending) => Some(RunState::Pending),
        Ok(pb::RunState::Running) => Some(RunState::Running),
        Ok(pb::RunState::Succeeded) => Some(RunState::Succeeded),
        Ok(pb::RunState::Failed) => Some(RunState::Failed),
        Ok(pb::RunState::Cancelled) => Some(RunState::Cancelled),
        Err(_) => return Err(EngineError::invalid("state", format!("unknown run state {s}"))),
    })
}

fn step_state_to_pb(s: StepState) -> pb::StepState {
    match s {
        StepState::Blocked => pb::StepState::Blocked,
        StepState::Queued => pb::StepState::Queued,
        StepState::Running => pb::StepState::Running,
        StepState::Retrying => pb::StepState::Retrying,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
        StepState::Cancelled => pb::StepState::Cancelled,
        StepState::Skipped => pb::StepState::Skipped,
    }
}

fn step_to_pb(s: &StepView) -> pb::StepRun {
    pb::StepRun {
        step_id: s.step_id.clone(),
        kind: s.kind.clone(),
        state: step_state_to_pb(s.state) as i32,
        attempts: s.attempts,
        output: s.output.as_ref().map(json::json_to_value),
        error: s.error.clone(),
        started_at: timestamp(s.started_at_ms),
        finished_at: timestamp(s.finished_at_ms),
    }
}

/// See the module docs.
pub fn run_to_pb(r: &RunView) -> pb::Run {
    pb::Run {
        run_id: r.run_id.clone(),
        workflow_name: r.workflow_name.clone(),
        workflow_version: r.workflow_version,
        state: run_state_to_pb(r.state) as i32,
        input: Some(json::map_to_struct(&r.input)),
        steps: r.steps.iter().map(step_to_pb).collect(),
        output: r.output.as_ref().map(json::json_to_value),
        error: r.error.clone(),
        created_at: timestamp(r.created_at_ms),
        started_at: timestamp(r.started_at_ms),
        finished_at: timestamp(r.finished_at_ms),
        priority: i32::from(r.priority),
        idempotency_key: r.idempotency_key.clone(),
    }
}

/// See the module docs.
pub fn task_to_pb(t: Task) -> pb::Task {
    pb::Task {
        task_id: t.task_id,
        run_id: t.run_id,
        step_id: t.step_id,
        kind: t.kind,
        config: Some(json::map_to_struct(&t.config)),
        input: Some(json::map_to_struct(&t.input)),
        dependency_outputs: t
            .dependency_outputs
            .iter()
            .map(|(k, v)| (k.clone(), json::json_to_value(v)))
            .collect(),
        attempt: t.attempt,
        lease_token: t.lease_token,
        lease_deadline: timestamp(t.lease_deadline_ms),
        queue: t.queue,
        workflow_name: t.workflow_name,
        workflow_version: t.workflow_version,
        timeout: Some(to_duration(t.timeout)),
        trace_context: t.trace_context,
    }
}

/// See the module docs.
pub fn queue_stats_to_pb(s: aura_queue::QueueStats) -> pb::QueueStats {
    pb::QueueStats {
        queue: s.queue,
        waiting: s.waiting,
        delayed: s.delayed,
        active: s.active,
        completed: s.completed,
        failed: s.failed,
        dead: s.dead,
        paused: s.paused,
    }
}

/// See the module docs.
pub fn schedule_to_pb(s: &aura_engine::schedules::Schedule, next_ms: u64) -> pb::Schedule {
    pb::Schedule {
        schedule_id: s.schedule_id.clone(),
        workflow_name: s.workflow_name.clone(),
        workflow_version: s.workflow_version,
        cron: s.cron.clone(),
        input: Some(json::map_to_struct(&s.input)),
        created_at: timestamp(s.created_at_ms),
        next_fire_time: timestamp(next_ms),
    }
}
