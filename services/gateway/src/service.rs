//! The `aura.v1.Gateway` handlers.

use std::{pin::Pin, time::Duration};

use aura_common::{CancellationToken, status};
use aura_proto::v1::{self as pb, events_client::EventsClient, scheduler_client::SchedulerClient};
use futures::StreamExt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, transport::Channel};

use crate::upstream::{DEFAULT_DEADLINE, forward};

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
}

/// Server-streamed events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// A long poll may take its full wait plus a margin.
const POLL_DEADLINE: Duration = Duration::from_secs(70);

/// Run events after which a watched run's stream ends.
const FINAL_EVENTS: &[&str] = &["run.succeeded", "run.failed", "run.cancelled"];

macro_rules! to_scheduler {
    ($self:ident, $method:ident, $req:ident) => {
        $self.scheduler.clone().$method(forward($req, DEFAULT_DEADLINE)).await
    };
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    async fn register_workflow(
        &self,
        req: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::RegisterWorkflowResponse>, Status> {
        to_scheduler!(self, register_workflow, req)
    }

    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        to_scheduler!(self, get_workflow, req)
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        to_scheduler!(self, list_workflows, req)
    }

    async fn start_run(
        &self,
        req: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        to_scheduler!(self, start_run, req)
    }

    async fn start_runs(
        &self,
        req: Request<pb::StartRunsRequest>,
    ) -> Result<Response<pb::StartRunsResponse>, Status> {
        to_scheduler!(self, start_runs, req)
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        to_scheduler!(self, get_run, req)
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        to_scheduler!(self, list_runs, req)
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        to_scheduler!(self, cancel_run, req)
    }

    type WatchRunStream = EventStream;

    async fn watch_run(&self, req: Request<pb::WatchRunRequest>) -> Result<Response<EventStream>, Status> {
        let run_id = req.into_inner().run_id;
        if run_id.is_empty() {
            return Err(status::invalid_field("run_id", "is required"));
        }
        // NOT_FOUND (or INVALID_ARGUMENT) up front rather than a stream that never ends.
        self.scheduler.clone().get_run(pb::GetRunRequest { run_id: run_id.clone() }).await?;
        let subscribe = pb::SubscribeRequest {
            patterns: vec![format!("runs.{run_id}")],
            from_offset: String::new(),
            from_beginning: true,
        };
        let mut upstream = self.events.clone().subscribe(subscribe).await?.into_inner();
        // A task forwards events and stops right after the run's final one, which ends the
        // client's stream (a stream adapter would only notice on the next event).
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = upstream.next() => item,
                    _ = shutdown.cancelled() => None,
                    _ = tx.closed() => None,
                };
                let Some(item) = item else { return };
                let last =
                    item.as_ref().is_ok_and(|e| FINAL_EVENTS.contains(&e.r#type.as_str())) || item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let upstream = self.events.clone().subscribe(req.into_inner()).await?.into_inner();
        Ok(Response::new(Box::pin(upstream.take_until(self.shutdown.clone().cancelled_owned()))))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        to_scheduler!(self, get_metrics, req)
    }

    async fn poll_tasks(
        &self,
        req: Request<pb::PollTasksRequest>,
    ) -> Result<Response<pb::PollTasksResponse>, Status> {
        self.scheduler.clone().poll_tasks(forward(req, POLL_DEADLINE)).await
    }

    async fn report_task_results(
        &self,
        req: Request<pb::ReportTaskResultsRequest>,
    ) -> Result<Response<pb::ReportTaskResultsResponse>, Status> {
        to_scheduler!(self, report_task_results, req)
    }

    async fn heartbeat_tasks(
        &self,
        req: Request<pb::HeartbeatTasksRequest>,
    ) -> Result<Response<pb::HeartbeatTasksResponse>, Status> {
        to_scheduler!(self, heartbeat_tasks, req)
    }

    async fn get_queue_stats(
        &self,
        req: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        to_scheduler!(self, get_queue_stats, req)
    }

    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        to_scheduler!(self, pause_queue, req)
    }

    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        to_scheduler!(self, resume_queue, req)
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        to_scheduler!(self, list_dead_letters, req)
    }

    async fn retry_dead_letter(
        &self,
        req: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<Response<pb::RetryDeadLetterResponse>, Status> {
        to_scheduler!(self, retry_dead_letter, req)
    }

    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        to_scheduler!(self, create_schedule, req)
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        to_scheduler!(self, list_schedules, req)
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        to_scheduler!(self, delete_schedule, req)
    }
}
