//! `aura.v1.Worker`: status and drain.

use std::time::Duration;

use aura_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::Runner;

/// The Worker service.
pub struct WorkerService {
    runner: Runner,
}

impl WorkerService {
    /// Serves a runner's status and drain.
    pub fn new(runner: Runner) -> Self {
        WorkerService { runner }
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.runner.status()))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let timeout = match req.into_inner().timeout {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(aura_common::status::invalid_field("timeout", "must not be negative"));
            }
            Some(d) => Some(Duration::new(d.seconds as u64, d.nanos as u32)),
        };
        let (finished, handed_back) = self.runner.drain(timeout).await;
        Ok(Response::new(pb::DrainResponse { finished, handed_back }))
    }
}
