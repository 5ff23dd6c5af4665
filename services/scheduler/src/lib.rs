//! The Scheduler service: `aura.v1.Scheduler` over [`aura_engine::Engine`].
//!
//! # Layout
//! - [`serve`] — wiring (health following Redis, reflection, the lease reaper, drain).
//! - `service.rs`: the RPC handlers, thin: convert, call the engine, convert back.
//! - `convert.rs`: protobuf ⇄ engine types (the only place both meet).
//! - `error.rs`: engine errors → gRPC statuses, in one function.
#![forbid(unsafe_code)]

pub mod convert;
mod error;
mod service;

use std::time::Duration;

use aura_common::{CancellationToken, grpc, redis::RedisConn};
use aura_proto::v1::scheduler_server::SchedulerServer;
use tokio::net::TcpListener;

pub use error::to_status;
pub use service::SchedulerService;

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Redis URL (a comma-separated list means Redis Cluster).
    pub redis_url: String,
    /// Queue partitions (must not change while runs exist).
    pub partitions: usize,
    /// Key prefix in Redis.
    pub prefix: String,
    /// Largest accepted workflow spec, bytes.
    pub max_spec_bytes: usize,
    /// Fair dispatch: most steps of one concurrency key running at once (0: no cap).
    pub key_concurrency_cap: u32,
    /// Where this role's Prometheus series are registered (served by the caller).
    pub metrics: aura_common::metrics::SharedRegistry,
    /// Serve TLS with this certificate.
    pub tls: Option<aura_common::tls::ServerTls>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: "redis://127.0.0.1:6379".into(),
            partitions: 1,
            prefix: "aura".into(),
            max_spec_bytes: 1 << 20,
            key_concurrency_cap: 0,
            metrics: aura_common::metrics::registry(),
            tls: None,
        }
    }
}

/// Builds the engine for `config`.
pub async fn engine(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(aura_engine::Engine, RedisConn)> {
    let conn = aura_common::redis::connect(&config.redis_url).await?;
    let keys = aura_queue::Keyspace::new(&config.prefix, config.partitions);
    let queue = aura_queue::Queue::new(conn.clone(), &config.redis_url, keys, shutdown)?
        .with_key_concurrency_cap(config.key_concurrency_cap);
    let bus = aura_bus::Bus::new(conn.clone(), &config.prefix, aura_bus::Retention::default());
    let engine_config = aura_engine::EngineConfig {
        max_spec_bytes: config.max_spec_bytes,
        prefix: config.prefix.clone(),
        ..Default::default()
    };
    Ok((aura_engine::Engine::new(queue, bus, engine_config), conn))
}

/// Serves the Scheduler on `listener` until `shutdown`, then drains: health turns
/// NOT_SERVING, long polls return empty, in-flight calls finish.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (engine, conn) = engine(&config, shutdown.clone()).await?;
    let (reporter, health) = grpc::health::<SchedulerServer<SchedulerService>>().await;
    let health_task = grpc::follow_redis::<SchedulerServer<SchedulerService>>(
        reporter,
        conn,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let maintenance = {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { engine.run_maintenance(Duration::from_millis(500), shutdown).await })
    };
    let schedules = {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { engine.run_schedules(Duration::from_millis(250), shutdown).await })
    };
    let gauges = tokio::spawn(queue_gauges(engine.clone(), &config.metrics, shutdown.clone()));
    let service = SchedulerService::new(engine, shutdown.clone());
    tracing::info!(addr = %listener.local_addr()?, tls = config.tls.is_some(), "scheduler listening");
    tonic::transport::Server::builder()
        // A span per call, joining the caller's trace (`traceparent` from the Gateway).
        .layer(aura_common::telemetry::TraceLayer)
        .layer(aura_common::metrics::GrpcMetricsLayer::new(&config.metrics))
        .add_service(health)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha())
        .add_service(
            SchedulerServer::new(service)
                .max_decoding_message_size(16 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(
            aura_common::tls::incoming(listener, config.tls.as_ref()),
            shutdown.cancelled_owned(),
        )
        .await?;
    let _ = health_task.await;
    let _ = maintenance.await;
    let _ = schedules.await;
    let _ = gauges.await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Labels of the queue depth gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: String,
}

/// Publishes the built-in queue's counters as gauges every few seconds (counted in Redis,
/// never scanned).
fn queue_gauges(
    engine: aura_engine::Engine,
    registry: &aura_common::metrics::SharedRegistry,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + use<> {
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    let depth = Family::<QueueState, Gauge>::default();
    let redis_up = Gauge::<i64>::default();
    {
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        r.register(
            "queue_jobs",
            "Jobs of the built-in queue by state (completed/failed are totals)",
            depth.clone(),
        );
        r.register("redis_up", "1 while Redis answers", redis_up.clone());
        let cache = engine.registry().cache_stats();
        r.register(
            "definition_cache_hits",
            "StartRun lookups of a workflow's latest version answered from memory",
            cache.hits.clone(),
        );
        r.register(
            "definition_cache_misses",
            "Lookups of a workflow's latest version that read Redis (first use, or invalidated)",
            cache.misses.clone(),
        );
    }
    async move {
        loop {
            match engine.queue().stats(aura_engine::spec::BUILTIN_QUEUE).await {
                Ok(stats) => {
                    redis_up.set(1);
                    for (state, value) in [
                        ("waiting", stats.waiting),
                        ("delayed", stats.delayed),
                        ("active", stats.active),
                        ("completed", stats.completed),
                        ("failed", stats.failed),
                        ("dead", stats.dead),
                    ] {
                        depth
                            .get_or_create(&QueueState { queue: stats.queue.clone(), state: state.into() })
                            .set(value as i64);
                    }
                }
                Err(_) => {
                    redis_up.set(0);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}
