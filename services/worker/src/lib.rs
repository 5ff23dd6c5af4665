//! The Worker service: pulls tasks from the Scheduler (never pushed: pull is how workers
//! scale and apply backpressure), executes the built-in step kinds, heartbeats, and drains
//! gracefully.
//!
//! # Layout
//! - [`serve`] — wiring (the `aura.v1.Worker` service and the runner).
//! - `runner.rs`: poll → execute → report, with heartbeats, per-kind limits and the drain.
//! - `service.rs`: `GetStatus`, `Drain`.
#![forbid(unsafe_code)]

mod runner;
mod service;

use std::{collections::BTreeMap, time::Duration};

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
    /// Most tasks of one kind in flight (e.g. `llm` → 4 to respect a provider's limits).
    /// Kinds not listed are bounded only by `concurrency`; empty (the default) means no
    /// per-kind limit. All built-in kinds share one queue and a poll cannot choose kinds, so
    /// while a limit applies the worker asks for no more tasks than the most constrained
    /// kind could still start: it never claims a task it cannot run at once.
    pub kind_concurrency: BTreeMap<String, usize>,
    /// How long a drain lets in-flight tasks finish before handing them back.
    pub drain_timeout: Duration,
    /// Heartbeat period (also how fast a cancellation reaches a running step).
    pub heartbeat_every: Duration,
    /// Default LLM API key.
    pub llm_api_key: Option<String>,
    /// Where this role's Prometheus series are registered (served by the caller).
    pub metrics: aura_common::metrics::SharedRegistry,
    /// Serve TLS with this certificate.
    pub tls: Option<aura_common::tls::ServerTls>,
    /// The CA that `https://` Scheduler endpoints are checked against.
    pub internal_tls: Option<aura_common::tls::ClientTls>,
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
            kind_concurrency: BTreeMap::new(),
            drain_timeout: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(1),
            llm_api_key: None,
            metrics: aura_common::metrics::registry(),
            tls: None,
            internal_tls: None,
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

/// Parses per-kind limits written as `http=32,llm=4` (spaces allowed, empty = none).
pub fn parse_kind_concurrency(text: &str) -> Result<BTreeMap<String, usize>, String> {
    let mut limits = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kind, limit) =
            item.split_once('=').ok_or_else(|| format!("{item:?} is not <kind>=<limit> (e.g. llm=4)"))?;
        let kind = kind.trim();
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
            return Err(format!("{kind:?} is not a step kind"));
        }
        let limit = match limit.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!("limit of {kind:?} must be a whole number >= 1, not {:?}", limit.trim()));
            }
        };
        if limits.insert(kind.to_string(), limit).is_some() {
            return Err(format!("{kind:?} is listed twice"));
        }
    }
    Ok(limits)
}

/// Runs the worker until `shutdown` (then drains) or until a `Drain` call finishes.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(config.concurrency >= 1, "worker concurrency must be at least 1");
    if let Some((kind, _)) = config.kind_concurrency.iter().find(|(_, limit)| **limit == 0) {
        anyhow::bail!("per-kind concurrency of {kind:?} must be at least 1");
    }
    let redis = aura_common::redis::connect(&config.redis_url).await?;
    let executor = aura_steps::Executor::new(redis.clone(), &config.prefix, config.llm_api_key.clone());
    let channel = runner::channel(&config.scheduler_urls, config.internal_tls.as_ref())?;
    let runner = Runner::new(config.clone(), channel, executor);
    let (reporter, health) = grpc::health::<WorkerServer<WorkerService>>().await;
    let health_task = grpc::follow_redis::<WorkerServer<WorkerService>>(
        reporter,
        redis,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let run_task = tokio::spawn(runner.clone().run(shutdown.clone()));
    let gauges = tokio::spawn(runner_gauges(runner.clone(), &config.metrics, shutdown.clone()));
    tracing::info!(
        addr = %listener.local_addr()?,
        worker_id = %config.worker_id,
        tls = config.tls.is_some(),
        "worker listening"
    );
    let server_stop = shutdown.clone();
    tonic::transport::Server::builder()
        // A span per call, joining the caller's trace.
        .layer(aura_common::telemetry::TraceLayer)
        .layer(aura_common::metrics::GrpcMetricsLayer::new(&config.metrics))
        .add_service(health)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha())
        .add_service(WorkerServer::new(WorkerService::new(runner)))
        .serve_with_incoming_shutdown(
            aura_common::tls::incoming(listener, config.tls.as_ref()),
            server_stop.cancelled_owned(),
        )
        .await?;
    let _ = run_task.await;
    let _ = health_task.await;
    let _ = gauges.await;
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_limits() {
        let limits = parse_kind_concurrency(" http=32, llm = 4 ,").unwrap();
        assert_eq!(limits, BTreeMap::from([("http".to_string(), 32), ("llm".to_string(), 4)]));
        assert!(parse_kind_concurrency("").unwrap().is_empty());
        assert!(parse_kind_concurrency("llm").unwrap_err().contains("<kind>=<limit>"));
        assert!(parse_kind_concurrency("llm=0").unwrap_err().contains(">= 1"));
        assert!(parse_kind_concurrency("llm=x").is_err());
        assert!(parse_kind_concurrency("llm=1,llm=2").unwrap_err().contains("twice"));
        assert!(parse_kind_concurrency("=3").is_err());
    }
}

/// Labels of per-kind gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Labels of task outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// In-flight tasks, capacity and outcomes as Prometheus series, refreshed every second.
fn runner_gauges(
    runner: Runner,
    registry: &aura_common::metrics::SharedRegistry,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + use<> {
    use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
    let in_flight = Family::<KindLabel, Gauge>::default();
    let capacity = Gauge::<i64>::default();
    let outcomes = Family::<OutcomeLabel, Counter>::default();
    let (llm_hits, llm_misses) = (Counter::<u64>::default(), Counter::<u64>::default());
    {
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        r.register("worker_tasks_in_flight", "Tasks running now, by step kind", in_flight.clone());
        r.register("worker_capacity", "Most tasks this worker runs at once", capacity.clone());
        r.register("worker_task_attempts", "Task attempts finished, by outcome", outcomes.clone());
        r.register("llm_cache_hits", "llm steps answered from the Redis cache", llm_hits.clone());
        r.register("llm_cache_misses", "llm steps that called the model", llm_misses.clone());
    }
    async move {
        let (mut succeeded, mut failed, mut hits, mut misses) = (0, 0, 0, 0);
        loop {
            let status = runner.status();
            capacity.set(i64::from(status.capacity));
            in_flight.clear();
            for (kind, n) in &status.in_flight_by_kind {
                in_flight.get_or_create(&KindLabel { kind: kind.clone() }).set(i64::from(*n));
            }
            let ok = OutcomeLabel { outcome: "succeeded".into() };
            let err = OutcomeLabel { outcome: "failed".into() };
            outcomes.get_or_create(&ok).inc_by(status.succeeded.saturating_sub(succeeded));
            outcomes.get_or_create(&err).inc_by(status.failed.saturating_sub(failed));
            (succeeded, failed) = (status.succeeded, status.failed);
            let (h, m) = runner.llm_cache();
            llm_hits.inc_by(h.saturating_sub(hits));
            llm_misses.inc_by(m.saturating_sub(misses));
            (hits, misses) = (h, m);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
