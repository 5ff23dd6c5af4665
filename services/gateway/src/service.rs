//! The `aura.v1.Gateway` handlers: scope names to the caller's tenant (see `tenancy.rs`),
//! forward to the Scheduler or Events with the caller's deadline, translate answers back.

use std::{pin::Pin, time::Duration};

use aura_common::{CancellationToken, status};
use aura_proto::v1::{self as pb, events_client::EventsClient, scheduler_client::SchedulerClient};
use futures::StreamExt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    tenancy::{Scope, run_not_found},
    upstream::{DEFAULT_DEADLINE, deadline, upstream},
    validate::{Check, checked},
};

/// The Gateway service.
#[derive(Clone)]
pub struct GatewayService {
    scheduler: SchedulerClient<Channel>,
    events: EventsClient<Channel>,
    /// Ends open streams when the gateway drains.
    shutdown: CancellationToken,
}

impl GatewayService {
    /// A gateway over the given upstream channels.
    pub fn new(scheduler: Channel, events: Channel, shutdown: CancellationToken) -> Self {
        GatewayService {
            scheduler: SchedulerClient::new(scheduler).max_decoding_message_size(64 * 1024 * 1024),
            events: EventsClient::new(events),
            shutdown,
        }
    }

    fn scheduler(&self) -> SchedulerClient<Channel> {
        self.scheduler.clone()
    }

    /// The run, if it exists and belongs to `scope`'s tenant (else NOT_FOUND).
    async fn owned_run(&self, scope: &Scope, run_id: &str, within: Duration) -> Result<pb::Run, Status> {
        if run_id.is_empty() {
            return Err(status::invalid_field("run_id", "is required"));
        }
        let resp = self
            .scheduler()
            .get_run(upstream(pb::GetRunRequest { run_id: run_id.to_string() }, within))
            .await?;
        let mut run = resp.into_inner().run.unwrap_or_default();
        if !scope.run_out(&mut run) {
            return Err(run_not_found(run_id));
        }
        Ok(run)
    }

    /// Forwards a subscription and translates its events; with `until_final`, the stream
    /// ends right after the run's final event.
    async fn stream(
        &self,
        scope: Scope,
        req: pb::SubscribeRequest,
        until_final: bool,
    ) -> Result<EventStream, Status> {
        let upstream = self.events.clone().subscribe(req).await?.into_inner();
        Ok(self.forward(scope, upstream, until_final))
    }

    /// Hands an Events subscription to the caller, translated into its scope.
    fn forward(
        &self,
        scope: Scope,
        mut upstream: tonic::Streaming<pb::Event>,
        until_final: bool,
    ) -> EventStream {
        // A task forwards events (so a stream can end right after a final event, which a
        // stream adapter would only notice on the next one).
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = upstream.next() => item,
                    _ = shutdown.cancelled() => None,
                    _ = tx.closed() => None,
                };
                let Some(mut item) = item else { return };
                if let Ok(event) = &mut item {
                    scope.event_out(event);
                }
                let last = item.is_err()
                    || (until_final
                        && item.as_ref().is_ok_and(|e| FINAL_EVENTS.contains(&e.r#type.as_str())));
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Server-streamed events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// A long poll may take its full wait plus a margin.
const POLL_DEADLINE: Duration = Duration::from_secs(70);

/// Run events after which a watched run's stream ends.
const FINAL_EVENTS: &[&str] = &["run.succeeded", "run.failed", "run.cancelled"];

/// Checks a request (INVALID_ARGUMENT before anything is forwarded) and splits it into its
/// tenant scope, deadline and message.
fn parts<T: Check>(req: Request<T>, default: Duration) -> Result<(Scope, Duration, T), Status> {
    checked(req.get_ref())?;
    let scope = Scope::of(&req);
    let within = deadline(&req, default);
    Ok((scope, within, req.into_inner()))
}

fn queue_stats(scope: &Scope, stats: Option<pb::QueueStats>) -> Option<pb::QueueStats> {
    stats.map(|mut s| {
        scope.stats_out(&mut s);
        s
    })
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    async fn register_workflow(
        &self,
        req: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::RegisterWorkflowResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        if let Some(spec) = &mut msg.spec {
            scope.spec_in(spec);
        }
        let mut resp = self.scheduler().register_workflow(upstream(msg, within)).await?.into_inner();
        if let Some(wf) = &mut resp.workflow {
            scope.workflow_out(wf);
        }
        Ok(Response::new(resp))
    }

    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        let visible = msg.name.clone();
        msg.name = scope.name_in(&msg.name);
        let mut resp = self.scheduler().get_workflow(upstream(msg, within)).await.map_err(|e| {
            if e.code() == tonic::Code::NotFound {
                Status::not_found(format!("workflow {visible:?} is not registered"))
            } else {
                e
            }
        })?;
        if let Some(wf) = &mut resp.get_mut().workflow {
            scope.workflow_out(wf);
        }
        Ok(resp)
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        // Names sort by tenant prefix, so a tenant's page starts at its own prefix.
        if let Some(tenant) = scope.tenant()
            && msg.page_token.is_empty()
        {
            msg.page_token = format!("{tenant}.");
        }
        let mut resp = self.scheduler().list_workflows(upstream(msg, within)).await?.into_inner();
        let before = resp.workflows.len();
        resp.workflows.retain_mut(|wf| scope.workflow_out(wf));
        if resp.workflows.len() < before {
            // Past the tenant's own names: no further page is the tenant's.
            resp.next_page_token.clear();
        }
        Ok(Response::new(resp))
    }

    async fn start_run(
        &self,
        req: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        scope_start(&scope, &mut msg);
        let mut resp = self.scheduler().start_run(upstream(msg, within)).await?.into_inner();
        if let Some(run) = &mut resp.run {
            scope.run_out(run);
        }
        Ok(Response::new(resp))
    }

    async fn start_runs(
        &self,
        req: Request<pb::StartRunsRequest>,
    ) -> Result<Response<pb::StartRunsResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        for run in &mut msg.runs {
            scope_start(&scope, run);
        }
        self.scheduler().start_runs(upstream(msg, within)).await
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        let (scope, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        let run = self.owned_run(&scope, &msg.run_id, within).await?;
        Ok(Response::new(pb::GetRunResponse { run: Some(run) }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        if scope.tenant().is_some() && msg.workflow_name.is_empty() {
            return Err(status::invalid_field("workflow_name", "name the workflow whose runs to list"));
        }
        msg.workflow_name = scope.name_in(&msg.workflow_name);
        let mut resp = self.scheduler().list_runs(upstream(msg, within)).await?.into_inner();
        resp.runs.retain_mut(|run| scope.run_out(run));
        Ok(Response::new(resp))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let (scope, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        self.owned_run(&scope, &msg.run_id, within).await?;
        let mut resp = self.scheduler().cancel_run(upstream(msg, within)).await?.into_inner();
        if let Some(run) = &mut resp.run {
            scope.run_out(run);
        }
        Ok(Response::new(resp))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(&self, req: Request<pb::WatchRunRequest>) -> Result<Response<EventStream>, Status> {
        let (scope, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        let subscribe = pb::SubscribeRequest {
            patterns: vec![format!("runs.{}", msg.run_id)],
            from_offset: String::new(),
            from_beginning: true,
        };
        // NOT_FOUND (or INVALID_ARGUMENT) up front rather than a stream that never ends. The
        // run is looked up while the subscription opens (two round trips in parallel, not in
        // a row); a run that is not the caller's drops the subscription unread.
        let mut events = self.events.clone();
        let (owned, upstream) =
            tokio::join!(self.owned_run(&scope, &msg.run_id, within), events.subscribe(subscribe));
        owned?;
        Ok(Response::new(self.forward(scope, upstream?.into_inner(), true)))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        let mut patterns = Vec::with_capacity(msg.patterns.len());
        for (i, pattern) in msg.patterns.iter().enumerate() {
            let (stored, run) = scope.pattern_in(i, pattern)?;
            if let Some(run_id) = run {
                self.owned_run(&scope, &run_id, within).await?;
            }
            patterns.push(stored);
        }
        msg.patterns = patterns;
        Ok(Response::new(self.stream(scope, msg, false).await?))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        if scope.tenant().is_some() && msg.workflow_name.is_empty() {
            return Err(status::invalid_field("workflow_name", "name the workflow whose metrics to read"));
        }
        let visible = msg.workflow_name.clone();
        msg.workflow_name = scope.name_in(&msg.workflow_name);
        let mut resp = self.scheduler().get_metrics(upstream(msg, within)).await?.into_inner();
        resp.workflow_name = visible;
        Ok(Response::new(resp))
    }

    async fn poll_tasks(
        &self,
        req: Request<pb::PollTasksRequest>,
    ) -> Result<Response<pb::PollTasksResponse>, Status> {
        let (scope, within, mut msg) = parts(req, POLL_DEADLINE)?;
        msg.queues = msg
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| scope.queue_in(&format!("queues[{i}]"), q))
            .collect::<Result<_, _>>()?;
        let mut resp = self.scheduler().poll_tasks(upstream(msg, within)).await?.into_inner();
        for task in &mut resp.tasks {
            scope.task_out(task);
        }
        Ok(Response::new(resp))
    }

    async fn report_task_results(
        &self,
        req: Request<pb::ReportTaskResultsRequest>,
    ) -> Result<Response<pb::ReportTaskResultsResponse>, Status> {
        // Results are fenced by the lease tokens handed out by this tenant's polls.
        let (_, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        self.scheduler().report_task_results(upstream(msg, within)).await
    }

    async fn heartbeat_tasks(
        &self,
        req: Request<pb::HeartbeatTasksRequest>,
    ) -> Result<Response<pb::HeartbeatTasksResponse>, Status> {
        let (_, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        self.scheduler().heartbeat_tasks(upstream(msg, within)).await
    }

    async fn get_queue_stats(
        &self,
        req: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        msg.queue = scope.queue_in("queue", &msg.queue)?;
        let resp = self.scheduler().get_queue_stats(upstream(msg, within)).await?.into_inner();
        Ok(Response::new(pb::GetQueueStatsResponse { stats: queue_stats(&scope, resp.stats) }))
    }

    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        msg.queue = scope.queue_in("queue", &msg.queue)?;
        let resp = self.scheduler().pause_queue(upstream(msg, within)).await?.into_inner();
        Ok(Response::new(pb::PauseQueueResponse { stats: queue_stats(&scope, resp.stats) }))
    }

    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        msg.queue = scope.queue_in("queue", &msg.queue)?;
        let resp = self.scheduler().resume_queue(upstream(msg, within)).await?.into_inner();
        Ok(Response::new(pb::ResumeQueueResponse { stats: queue_stats(&scope, resp.stats) }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        msg.queue = scope.queue_in("queue", &msg.queue)?;
        self.scheduler().list_dead_letters(upstream(msg, within)).await
    }

    async fn retry_dead_letter(
        &self,
        req: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<Response<pb::RetryDeadLetterResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        msg.queue = scope.queue_in("queue", &msg.queue)?;
        self.scheduler().retry_dead_letter(upstream(msg, within)).await
    }

    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let (scope, within, mut msg) = parts(req, DEFAULT_DEADLINE)?;
        msg.workflow_name = scope.name_in(&msg.workflow_name);
        let mut resp = self.scheduler().create_schedule(upstream(msg, within)).await?.into_inner();
        if let Some(s) = &mut resp.schedule {
            scope.schedule_out(s);
        }
        Ok(Response::new(resp))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let (scope, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        let mut resp = self.scheduler().list_schedules(upstream(msg, within)).await?.into_inner();
        resp.schedules.retain_mut(|s| scope.schedule_out(s));
        Ok(Response::new(resp))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let (scope, within, msg) = parts(req, DEFAULT_DEADLINE)?;
        if scope.tenant().is_some() {
            let all = self
                .scheduler()
                .list_schedules(upstream(pb::ListSchedulesRequest {}, within))
                .await?
                .into_inner();
            let owned = all
                .schedules
                .iter()
                .any(|s| s.schedule_id == msg.schedule_id && scope.name_out(&s.workflow_name).is_some());
            if !owned {
                return Err(Status::not_found(format!("schedule {:?} not found", msg.schedule_id)));
            }
        }
        self.scheduler().delete_schedule(upstream(msg, within)).await
    }
}

/// Scopes a run start: the workflow's name, and fair dispatch per tenant by default.
fn scope_start(scope: &Scope, msg: &mut pb::StartRunRequest) {
    msg.workflow_name = scope.name_in(&msg.workflow_name);
    if let Some(tenant) = scope.tenant() {
        msg.concurrency_key = if msg.concurrency_key.is_empty() {
            tenant.to_string()
        } else {
            format!("{tenant}.{}", msg.concurrency_key)
        };
    }
}
