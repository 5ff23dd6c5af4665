//! The Worker service: pulls tasks from the Scheduler (never pushed: pull is how workers
//! scale and apply backpressure), executes the built-in step kinds, heartbeats, and drains
//! gracefully.
//!
//! # Layout
//! - [`serve`] — wiring (the `aura.v1.Worker` service and the runner).
//! - `runner.rs`: poll → execute → report, with heartbeats and the drain.
//! - `service.rs`: `GetStatus`, `Drain`.
#![forbid(unsafe_code)]

mod runner;
mod service;

use std::time::Duration;

use aura_common::{CancellationToken, grpc};
use aura_proto::v1::worker_server::WorkerServer;
use tokio::net::TcpListener;

pub use runner::Runner;
pub use service::WorkerService;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Scheduler endpoints (`http://host:port`), balanced across.
    pub scheduler_urls: Vec<String>,
    /// Redis URL (LLM response cache, health).
    pub redis_url: String,
    /// Key prefix in Redis.
    pub prefix: String,
    /// Stable id for logs and status (default: hostname-pid).
    pub worker_id: String,
    /// Queues to poll.
    pub queues: Vec<String>,
    /// Most tasks in flight.
    pub concurrency: usize,
    /// How long a drain lets in-flight tasks finish before handing them back.
    pub drain_timeout: Duration,
    /// Heartbeat period (also how fast a cancellation reaches a running step).
    pub heartbeat_every: Duration,
    /// Default LLM API key.
    pub llm_api_key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_urls: vec!["http://127.0.0.1:50052".into()],
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: "aura".into(),
            worker_id: default_worker_id(),
            queues: vec!["builtin".into()],
            concurrency: 64,
            drain_timeout: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(1),
            llm_api_key: None,
        }
    }
}

/// `<hostname>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the worker until `shutdown` (then drains) or until a `Drain` call finishes.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis = aura_common::redis::connect(&config.redis_url).await?;
    let executor = aura_steps::Executor::new(redis.clone(), &config.prefix, config.llm_api_key.clone());
    let channel = runner::channel(&config.scheduler_urls)?;
    let runner = Runner::new(config.clone(), channel, executor);
    let (reporter, health) = grpc::health::<WorkerServer<WorkerService>>().await;
    let health_task = grpc::follow_redis::<WorkerServer<WorkerService>>(
        reporter,
        redis,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let run_task = tokio::spawn(runner.clone().run(shutdown.clone()));
    tracing::info!(addr = %listener.local_addr()?, worker_id = %config.worker_id, "worker listening");
    let server_stop = shutdown.clone();
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha())
        .add_service(WorkerServer::new(WorkerService::new(runner)))
        .serve_with_incoming_shutdown(grpc::incoming(listener), server_stop.cancelled_owned())
        .await?;
    let _ = run_task.await;
    let _ = health_task.await;
    tracing::info!("worker stopped");
    Ok(())
}
