//! The `aura.v1.Scheduler` handlers: validate, convert, call the engine, convert back.

use std::time::Duration;

use aura_common::{CancellationToken, status};
use aura_engine::{
    Engine,
    runs::ListFilter,
    tasks::{LeaseStatus, TaskFailure, TaskReport},
    validate,
};
use aura_proto::{json, v1 as pb};
use tonic::{Request, Response, Status};

use crate::{convert::*, error::to_status};

/// The Scheduler service.
#[derive(Clone)]
pub struct SchedulerService {
    engine: Engine,
    /// Ends long polls early when the process drains.
    shutdown: CancellationToken,
}

impl SchedulerService {
    /// Wraps an engine.
    pub fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        SchedulerService { engine, shutdown }
    }
}

type Reply<T> = Result<Response<T>, Status>;

// The stateless checks are `aura_engine::validate`'s, shared with the Gateway.
fn page_size(n: u32) -> Result<usize, Status> {
    validate::page_size(n).map_err(to_status)
}

fn queue_name(q: &str) -> Result<(), Status> {
    validate::queue_name("queue", q).map_err(to_status)
}

/// Default of PollTasks' wait.
const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(20);

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for SchedulerService {
    async fn register_workflow(
        &self,
        req: Request<pb::RegisterWorkflowRequest>,
    ) -> Reply<pb::RegisterWorkflowResponse> {
        let spec = spec_from_pb(req.into_inner().spec).map_err(to_status)?;
        spec.validate(self.engine.max_spec_bytes()).map_err(to_status)?;
        // What only the step kinds know: jq programs compile, templates parse.
        for (i, step) in spec.steps.iter().enumerate() {
            aura_steps::validate_step(&step.kind, &step.config, &step.depends_on).map_err(
                |(key, reason)| status::invalid_field(format!("spec.steps[{i}].config.{key}"), reason),
            )?;
        }
        let (wf, created) = self.engine.registry().register(&spec).await.map_err(to_status)?;
        tracing::info!(workflow = %wf.spec.name, version = wf.version, created, "workflow registered");
        Ok(Response::new(pb::RegisterWorkflowResponse { workflow: Some(workflow_to_pb(&wf)), created }))
    }

    async fn get_workflow(&self, req: Request<pb::GetWorkflowRequest>) -> Reply<pb::GetWorkflowResponse> {
        let req = req.into_inner();
        validate::required("name", &req.name).map_err(to_status)?;
        let wf = self.engine.registry().get(&req.name, req.version).await.map_err(to_status)?;
        Ok(Response::new(pb::GetWorkflowResponse { workflow: Some(workflow_to_pb(&wf)) }))
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Reply<pb::ListWorkflowsResponse> {
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let (wfs, more) = self.engine.registry().list(&req.page_token, limit).await.map_err(to_status)?;
        let next_page_token =
            if more { wfs.last().map(|w| w.spec.name.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: wfs.iter().map(|w| workflow_to_pb(w)).collect(),
            next_page_token,
        }))
    }

    async fn start_run(&self, req: Request<pb::StartRunRequest>) -> Reply<pb::StartRunResponse> {
        let mut start = start_from_pb(req.into_inner()).map_err(to_status)?;
        start.trace_context = aura_common::telemetry::current_context();
        let started = self.engine.start_run(start).await.map_err(to_status)?;
        let run = match started.view {
            Some(run) => run,
            // A repeated idempotency key: the existing run, as it stands now.
            None => self.engine.get_run(&started.run_id).await.map_err(to_status)?,
        };
        Ok(Response::new(pb::StartRunResponse { run: Some(run_to_pb(&run)), created: started.created }))
    }

    async fn start_runs(&self, req: Request<pb::StartRunsRequest>) -> Reply<pb::StartRunsResponse> {
        let runs = req.into_inner().runs;
        validate::batch("runs", runs.len()).map_err(to_status)?;
        let mut starts = Vec::with_capacity(runs.len());
        // Every run of the batch joins this call's trace.
        let trace_context = aura_common::telemetry::current_context();
        let mut results: Vec<Option<pb::StartRunResult>> = Vec::with_capacity(runs.len());
        for (i, run) in runs.into_iter().enumerate() {
            match start_from_pb(run) {
                Ok(mut s) => {
                    s.trace_context = trace_context.clone();
                    starts.push((i, s));
                    results.push(None);
                }
                Err(e) => results.push(Some(item_error(to_status(e)))),
            }
        }
        let (idx, reqs): (Vec<usize>, Vec<_>) = starts.into_iter().unzip();
        for (i, outcome) in idx.into_iter().zip(self.engine.start_runs(reqs).await) {
            results[i] = Some(match outcome {
                Ok(s) => pb::StartRunResult {
                    run_id: s.run_id,
                    created: s.created,
                    code: 0,
                    message: String::new(),
                },
                Err(e) => item_error(to_status(e)),
            });
        }
        Ok(Response::new(pb::StartRunsResponse {
            results: results.into_iter().map(Option::unwrap_or_default).collect(),
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Reply<pb::GetRunResponse> {
        let run_id = req.into_inner().run_id;
        validate::required("run_id", &run_id).map_err(to_status)?;
        let run = self.engine.get_run(&run_id).await.map_err(to_status)?;
        Ok(Response::new(pb::GetRunResponse { run: Some(run_to_pb(&run)) }))
    }

    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Reply<pb::ListRunsResponse> {
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let filter = ListFilter {
            workflow_name: req.workflow_name,
            state: run_state_from_pb(req.state).map_err(to_status)?,
            created_after_ms: timestamp_ms(req.created_after.as_ref()),
            created_before_ms: timestamp_ms(req.created_before.as_ref()),
        };
        let (runs, next_page_token) =
            self.engine.list_runs(&filter, &req.page_token, limit).await.map_err(to_status)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(run_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn cancel_run(&self, req: Request<pb::CancelRunRequest>) -> Reply<pb::CancelRunResponse> {
        let req = req.into_inner();
        validate::required("run_id", &req.run_id).map_err(to_status)?;
        let run = self.engine.cancel_run(&req.run_id, &req.reason).await.map_err(to_status)?;
        Ok(Response::new(pb::CancelRunResponse { run: Some(run_to_pb(&run)) }))
    }

    async fn get_metrics(&self, req: Request<pb::GetMetricsRequest>) -> Reply<pb::GetMetricsResponse> {
        let req = req.into_inner();
        let window = pb::MetricsWindow::try_from(req.window)
            .map_err(|_| status::invalid_field("window", "unknown window"))?;
        let minutes = match window {
            pb::MetricsWindow::LastMinute => 1,
            pb::MetricsWindow::Unspecified | pb::MetricsWindow::LastHour => 60,
            pb::MetricsWindow::LastDay => 1440,
        };
        let counts = self.engine.run_metrics(&req.workflow_name, minutes).await.map_err(to_status)?;
        let quantile_ms = aura_engine::metrics::quantile_ms;
        Ok(Response::new(pb::GetMetricsResponse {
            workflow_name: req.workflow_name,
            window: if window == pb::MetricsWindow::Unspecified {
                pb::MetricsWindow::LastHour as i32
            } else {
                req.window
            },
            runs: Some(pb::RunMetrics {
                runs_started: counts.started,
                runs_succeeded: counts.succeeded,
                runs_failed: counts.failed,
                runs_cancelled: counts.cancelled,
                success_rate: counts.success_rate(),
                throughput_per_second: counts.throughput(),
                steps_retried: counts.retried,
                duration_p50_ms: counts.duration_quantile_ms(0.50),
                duration_p95_ms: counts.duration_quantile_ms(0.95),
                duration_p99_ms: counts.duration_quantile_ms(0.99),
                durations_counted: counts.durations_counted(),
                queue_wait_p50_ms: quantile_ms(&counts.wait_buckets, 0.50),
                queue_wait_p95_ms: quantile_ms(&counts.wait_buckets, 0.95),
                queue_wait_p99_ms: quantile_ms(&counts.wait_buckets, 0.99),
            }),
            step_kinds: counts
                .kinds
                .iter()
                .map(|k| pb::StepKindMetrics {
                    kind: k.kind.clone(),
                    attempts_started: k.started,
                    queue_wait_p50_ms: quantile_ms(&k.wait_buckets, 0.50),
                    queue_wait_p95_ms: quantile_ms(&k.wait_buckets, 0.95),
                    queue_wait_p99_ms: quantile_ms(&k.wait_buckets, 0.99),
                })
                .collect(),
        }))
    }

    async fn poll_tasks(&self, req: Request<pb::PollTasksRequest>) -> Reply<pb::PollTasksResponse> {
        // Tasks claimed after the caller gave up would stay leased to nobody until their
        // lease expires (costing an attempt): answer well before the caller's deadline.
        let deadline = aura_common::grpc::grpc_timeout(req.metadata());
        let req = req.into_inner();
        let wait = match req.wait.as_ref() {
            None => DEFAULT_POLL_WAIT,
            Some(_) => Duration::from_millis(duration_ms("wait", req.wait.as_ref()).map_err(to_status)?),
        };
        validate::poll_wait(wait).map_err(to_status)?;
        let wait = match deadline {
            Some(d) => wait.min(d.saturating_sub(d / 5).saturating_sub(Duration::from_millis(100))),
            None => wait,
        };
        let tasks = self
            .engine
            .poll_tasks(&req.worker_id, &req.queues, req.max_tasks as usize, wait, &self.shutdown)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PollTasksResponse { tasks: tasks.into_iter().map(task_to_pb).collect() }))
    }

    async fn report_task_results(
        &self,
        req: Request<pb::ReportTaskResultsRequest>,
    ) -> Reply<pb::ReportTaskResultsResponse> {
        let req = req.into_inner();
        validate::batch("results", req.results.len()).map_err(to_status)?;
        let mut reports = Vec::with_capacity(req.results.len());
        for (i, r) in req.results.into_iter().enumerate() {
            let outcome = match r.outcome {
                Some(pb::task_result::Outcome::Output(v)) => Ok(json::value_to_json(&v)),
                Some(pb::task_result::Outcome::Error(e)) => Err(TaskFailure {
                    message: e.message,
                    retryable: e.retryable,
                    release: e.release,
                    retry_after: match e.retry_after.as_ref() {
                        None => None,
                        Some(_) => Some(Duration::from_millis(
                            duration_ms(&format!("results[{i}].error.retry_after"), e.retry_after.as_ref())
                                .map_err(to_status)?,
                        )),
                    },
                }),
                None => {
                    return Err(status::invalid_field(format!("results[{i}]"), "set either output or error"));
                }
            };
            validate::task_result(i, &r.task_id, &r.lease_token).map_err(to_status)?;
            reports.push(TaskReport { task_id: r.task_id, lease_token: r.lease_token, outcome });
        }
        let acks = self.engine.report_tasks(reports).await.map_err(to_status)?;
        Ok(Response::new(pb::ReportTaskResultsResponse {
            acks: acks
                .into_iter()
                .map(|a| pb::TaskResultAck { task_id: a.task_id, accepted: a.accepted, reason: a.reason })
                .collect(),
        }))
    }

    async fn heartbeat_tasks(
        &self,
        req: Request<pb::HeartbeatTasksRequest>,
    ) -> Reply<pb::HeartbeatTasksResponse> {
        let req = req.into_inner();
        let extend = match req.extend_by.as_ref() {
            None => Duration::from_secs(60),
            Some(_) => {
                Duration::from_millis(duration_ms("extend_by", req.extend_by.as_ref()).map_err(to_status)?)
            }
        };
        validate::lease_extension(extend).map_err(to_status)?;
        let ids: Vec<String> = req.leases.iter().map(|l| l.task_id.clone()).collect();
        let leases = req.leases.into_iter().map(|l| (l.task_id, l.lease_token)).collect();
        let statuses = self.engine.heartbeat_tasks(leases, extend).await.map_err(to_status)?;
        Ok(Response::new(pb::HeartbeatTasksResponse {
            heartbeats: ids
                .into_iter()
                .zip(statuses)
                .map(|(task_id, s)| {
                    let (status, deadline) = match s {
                        LeaseStatus::Extended(d) => (pb::LeaseStatus::Extended, timestamp(d)),
                        LeaseStatus::Cancelled => (pb::LeaseStatus::Cancelled, None),
                        LeaseStatus::Lost => (pb::LeaseStatus::Lost, None),
                    };
                    pb::TaskHeartbeat { task_id, status: status as i32, lease_deadline: deadline }
                })
                .collect(),
        }))
    }

    async fn get_queue_stats(
        &self,
        req: Request<pb::GetQueueStatsRequest>,
    ) -> Reply<pb::GetQueueStatsResponse> {
        let queue = req.into_inner().queue;
        queue_name(&queue)?;
        let stats = self.engine.queue().stats(&queue).await.map_err(|e| to_status(e.into()))?;
        Ok(Response::new(pb::GetQueueStatsResponse { stats: Some(queue_stats_to_pb(stats)) }))
    }

    async fn pause_queue(&self, req: Request<pb::PauseQueueRequest>) -> Reply<pb::PauseQueueResponse> {
        let queue = req.into_inner().queue;
        queue_name(&queue)?;
        let q = self.engine.queue();
        q.pause(&queue).await.map_err(|e| to_status(e.into()))?;
        let stats = q.stats(&queue).await.map_err(|e| to_status(e.into()))?;
        Ok(Response::new(pb::PauseQueueResponse { stats: Some(queue_stats_to_pb(stats)) }))
    }

    async fn resume_queue(&self, req: Request<pb::ResumeQueueRequest>) -> Reply<pb::ResumeQueueResponse> {
        let queue = req.into_inner().queue;
        queue_name(&queue)?;
        let q = self.engine.queue();
        q.resume(&queue).await.map_err(|e| to_status(e.into()))?;
        let stats = q.stats(&queue).await.map_err(|e| to_status(e.into()))?;
        Ok(Response::new(pb::ResumeQueueResponse { stats: Some(queue_stats_to_pb(stats)) }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Reply<pb::ListDeadLettersResponse> {
        let req = req.into_inner();
        queue_name(&req.queue)?;
        let limit = page_size(req.page_size)?;
        let cursor = validate::dead_letter_cursor(&req.page_token).map_err(to_status)?;
        let (dead, next) = self
            .engine
            .queue()
            .dead_letters(&req.queue, cursor, limit)
            .await
            .map_err(|e| to_status(e.into()))?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: dead
                .into_iter()
                .map(|d| {
                    let (run_id, step_id) = aura_engine::ids::split_task_id(&d.id).unwrap_or_default();
                    pb::DeadLetter {
                        run_id: run_id.to_string(),
                        step_id: step_id.to_string(),
                        task_id: d.id,
                        attempts: d.attempts,
                        error: d.error,
                        died_at: timestamp(d.died_at_ms),
                    }
                })
                .collect(),
            next_page_token: next.map(|(p, o)| format!("{p}:{o}")).unwrap_or_default(),
        }))
    }

    async fn retry_dead_letter(
        &self,
        req: Request<pb::RetryDeadLetterRequest>,
    ) -> Reply<pb::RetryDeadLetterResponse> {
        let req = req.into_inner();
        queue_name(&req.queue)?;
        validate::retry_target(&req.task_id, req.all).map_err(to_status)?;
        let ids = match req.all {
            true => None,
            false => {
                let parts = self.engine.queue().keys().partitions();
                let p = aura_engine::ids::split_task_id(&req.task_id)
                    .and_then(|(run, _)| aura_engine::ids::partition_of_run(run, parts))
                    .unwrap_or_else(|| self.engine.queue().keys().partition_of(&req.task_id));
                Some(vec![(p, req.task_id.clone())])
            }
        };
        let single = ids.is_some();
        let retried =
            self.engine.queue().retry_dead(&req.queue, ids).await.map_err(|e| to_status(e.into()))?;
        if single && retried == 0 {
            return Err(Status::not_found(format!(
                "no dead letter {:?} in queue {:?}",
                req.task_id, req.queue
            )));
        }
        Ok(Response::new(pb::RetryDeadLetterResponse { retried: retried as u32 }))
    }

    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Reply<pb::CreateScheduleResponse> {
        let req = req.into_inner();
        let input = req.input.as_ref().map(json::struct_to_map).unwrap_or_default();
        let (schedule, next) = self
            .engine
            .create_schedule(&req.workflow_name, req.workflow_version, &req.cron, input)
            .await
            .map_err(to_status)?;
        tracing::info!(schedule_id = %schedule.schedule_id, cron = %schedule.cron, workflow = %schedule.workflow_name, "schedule created");
        Ok(Response::new(pb::CreateScheduleResponse { schedule: Some(schedule_to_pb(&schedule, next)) }))
    }

    async fn list_schedules(&self, _: Request<pb::ListSchedulesRequest>) -> Reply<pb::ListSchedulesResponse> {
        let all = self.engine.list_schedules().await.map_err(to_status)?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: all.iter().map(|(s, next)| schedule_to_pb(s, *next)).collect(),
        }))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Reply<pb::DeleteScheduleResponse> {
        let id = req.into_inner().schedule_id;
        validate::required("schedule_id", &id).map_err(to_status)?;
        self.engine.delete_schedule(&id).await.map_err(to_status)?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }
}

fn item_error(status: Status) -> pb::StartRunResult {
    pb::StartRunResult {
        run_id: String::new(),
        created: false,
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}
