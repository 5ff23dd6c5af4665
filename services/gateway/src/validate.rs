//! Structural checks of every Gateway request before it is forwarded, so a bad request is
//! INVALID_ARGUMENT (with a `google.rpc.BadRequest` naming the field) at the public door
//! and never costs a Scheduler a call. The rules are `aura_engine::validate`'s, the same
//! the Scheduler applies; what needs state (does the workflow exist, is the jq valid) stays
//! with the Scheduler. Checks run on the names the caller gave, before tenant scoping.

use std::time::Duration;

use aura_engine::{EngineError, validate as rules};
use aura_proto::v1 as pb;
use tonic::Status;

/// A request the Gateway checks before forwarding.
pub trait Check {
    /// `Err` names the first offending field.
    fn check(&self) -> Result<(), EngineError>;
}

/// Runs [`Check::check`] and turns a failure into INVALID_ARGUMENT with a `BadRequest`.
pub fn checked<T: Check>(msg: &T) -> Result<(), Status> {
    msg.check().map_err(|e| match e {
        EngineError::Invalid { field, reason } => aura_common::status::invalid_field(field, reason),
        other => Status::internal(other.to_string()),
    })
}

fn duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>, EngineError> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(EngineError::invalid(field, "must not be negative")),
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

/// A workflow name that may be left empty (meaning "all", where tenancy allows it).
fn optional_name(field: &str, name: &str) -> Result<(), EngineError> {
    if name.is_empty() { Ok(()) } else { rules::workflow_name(field, name) }
}

impl Check for pb::RegisterWorkflowRequest {
    fn check(&self) -> Result<(), EngineError> {
        let spec = self.spec.as_ref().ok_or_else(|| EngineError::invalid("spec", "is required"))?;
        rules::spec_outline(
            &spec.name,
            &spec.description,
            spec.steps.iter().map(|s| (s.id.as_str(), s.kind.as_str())),
        )
    }
}

impl Check for pb::GetWorkflowRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::required("name", &self.name)?;
        rules::workflow_name("name", &self.name)
    }
}

impl Check for pb::ListWorkflowsRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::page_size(self.page_size).map(drop)
    }
}

impl Check for pb::StartRunRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::required("workflow_name", &self.workflow_name)?;
        rules::workflow_name("workflow_name", &self.workflow_name)?;
        let delay = duration("delay", self.delay.as_ref())?.unwrap_or_default();
        rules::start_options(self.priority, &self.idempotency_key, &self.concurrency_key, delay)
    }
}

impl Check for pb::StartRunsRequest {
    /// Only the batch: each run's own errors are reported in its result, as the Scheduler
    /// does, rather than failing the whole call.
    fn check(&self) -> Result<(), EngineError> {
        rules::batch("runs", self.runs.len())
    }
}

impl Check for pb::GetRunRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::run_id("run_id", &self.run_id)
    }
}

impl Check for pb::CancelRunRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::run_id("run_id", &self.run_id)
    }
}

impl Check for pb::WatchRunRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::run_id("run_id", &self.run_id)
    }
}

impl Check for pb::ListRunsRequest {
    fn check(&self) -> Result<(), EngineError> {
        optional_name("workflow_name", &self.workflow_name)?;
        if pb::RunState::try_from(self.state).is_err() {
            return Err(EngineError::invalid("state", format!("unknown run state {}", self.state)));
        }
        rules::page_size(self.page_size).map(drop)
    }
}

impl Check for pb::SubscribeRequest {
    fn check(&self) -> Result<(), EngineError> {
        if self.patterns.is_empty() {
            return Err(EngineError::invalid("patterns", "name at least one topic pattern"));
        }
        for (i, p) in self.patterns.iter().enumerate() {
            rules::required(&format!("patterns[{i}]"), p)?;
            if let Some(run) = p.strip_prefix("runs.")
                && !run.contains(['*', '>'])
            {
                rules::run_id(&format!("patterns[{i}]"), run)?;
            }
        }
        Ok(())
    }
}

impl Check for pb::GetMetricsRequest {
    fn check(&self) -> Result<(), EngineError> {
        optional_name("workflow_name", &self.workflow_name)?;
        if pb::MetricsWindow::try_from(self.window).is_err() {
            return Err(EngineError::invalid("window", "unknown window"));
        }
        Ok(())
    }
}

impl Check for pb::PollTasksRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::poll(&self.queues, self.max_tasks as usize)?;
        if let Some(wait) = duration("wait", self.wait.as_ref())? {
            rules::poll_wait(wait)?;
        }
        Ok(())
    }
}

impl Check for pb::ReportTaskResultsRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::batch("results", self.results.len())?;
        for (i, r) in self.results.iter().enumerate() {
            match &r.outcome {
                None => {
                    return Err(EngineError::invalid(format!("results[{i}]"), "set either output or error"));
                }
                Some(pb::task_result::Outcome::Error(e)) => {
                    duration(&format!("results[{i}].error.retry_after"), e.retry_after.as_ref())?;
                }
                Some(pb::task_result::Outcome::Output(_)) => {}
            }
            rules::task_result(i, &r.task_id, &r.lease_token)?;
        }
        Ok(())
    }
}

impl Check for pb::HeartbeatTasksRequest {
    fn check(&self) -> Result<(), EngineError> {
        match duration("extend_by", self.extend_by.as_ref())? {
            Some(extend) => rules::lease_extension(extend),
            None => Ok(()),
        }
    }
}

macro_rules! queue_requests {
    ($($t:ty),*) => {$(
        impl Check for $t {
            fn check(&self) -> Result<(), EngineError> {
                rules::queue_name("queue", &self.queue)
            }
        }
    )*};
}
queue_requests!(pb::GetQueueStatsRequest, pb::PauseQueueRequest, pb::ResumeQueueRequest);

impl Check for pb::ListDeadLettersRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::queue_name("queue", &self.queue)?;
        rules::page_size(self.page_size)?;
        rules::dead_letter_cursor(&self.page_token).map(drop)
    }
}

impl Check for pb::RetryDeadLetterRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::queue_name("queue", &self.queue)?;
        rules::retry_target(&self.task_id, self.all)
    }
}

impl Check for pb::CreateScheduleRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::required("workflow_name", &self.workflow_name)?;
        rules::workflow_name("workflow_name", &self.workflow_name)?;
        aura_engine::schedules::parse_cron(&self.cron).map(drop)
    }
}

impl Check for pb::ListSchedulesRequest {
    fn check(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

impl Check for pb::DeleteScheduleRequest {
    fn check(&self) -> Result<(), EngineError> {
        rules::required("schedule_id", &self.schedule_id)
    }
}
