//! The Gateway: `aura.v1.Gateway`, the only public service. It forwards to the Scheduler
//! and Events over balanced tonic channels, propagating the caller's deadline.
//!
//! # Layout
//! - [`serve`] — wiring.
//! - `service.rs`: the handlers (forwarding, `WatchRun`).
//! - `upstream.rs`: channels to the internal services and deadline propagation.
#![forbid(unsafe_code)]

pub mod auth;
mod service;
pub mod tenancy;
mod upstream;

use std::time::Duration;

use aura_common::{CancellationToken, grpc};
use aura_proto::v1::gateway_server::GatewayServer;
use tokio::net::TcpListener;

pub use service::GatewayService;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Scheduler endpoints.
    pub scheduler_urls: Vec<String>,
    /// Events endpoints.
    pub events_urls: Vec<String>,
    /// Redis URL (health; rate limits).
    pub redis_url: String,
    /// Largest request message accepted, bytes.
    pub max_message_bytes: usize,
    /// Where this role's Prometheus series are registered (served by the caller).
    pub metrics: aura_common::metrics::SharedRegistry,
    /// Accept calls without an API key (`--insecure-no-auth`). Off by default.
    pub insecure_no_auth: bool,
    /// A file of `tenant:key` lines accepted besides the keys in Redis.
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Key prefix in Redis.
    pub prefix: String,
    /// Default per-tenant rate limit (`None`: no limit).
    pub rate_limit: Option<aura_ratelimit::Limit>,
    /// What the limiter does while Redis is unreachable.
    pub rate_limit_fail: aura_ratelimit::FailMode,
    /// Serve TLS with this PEM certificate chain and private key (files).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_urls: vec!["http://127.0.0.1:50052".into()],
            events_urls: vec!["http://127.0.0.1:50054".into()],
            redis_url: "redis://127.0.0.1:6379".into(),
            max_message_bytes: 4 * 1024 * 1024,
            metrics: aura_common::metrics::registry(),
            insecure_no_auth: false,
            api_keys_file: None,
            prefix: "aura".into(),
            rate_limit: Some(aura_ratelimit::Limit { rps: 1000, burst: 2000 }),
            rate_limit_fail: aura_ratelimit::FailMode::OpenToLocal,
            tls: None,
        }
    }
}

/// Serves the Gateway on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis = aura_common::redis::connect(&config.redis_url).await?;
    let authenticator = if config.insecure_no_auth {
        tracing::warn!(
            "authentication is OFF (--insecure-no-auth): anyone who reaches this gateway can use it"
        );
        None
    } else {
        let static_keys = match &config.api_keys_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read API keys file {}: {e}", path.display()))?;
                aura_auth::parse_key_file(&text)
                    .map_err(|e| anyhow::anyhow!("API keys file {}: {e}", path.display()))?
            }
            None => Default::default(),
        };
        Some(auth::Authenticator::new(aura_auth::KeyStore::new(redis.clone(), &config.prefix), static_keys))
    };
    let service = GatewayService::new(
        upstream::channel(&config.scheduler_urls)?,
        upstream::channel(&config.events_urls)?,
        shutdown.clone(),
    );
    let key = rate_limit_key();
    let first_tier = config.rate_limit.map(|limit| aura_ratelimit::first_tier(limit, key.clone()));
    let global = config.rate_limit.map(|limit| {
        let limiter =
            aura_ratelimit::RateLimiter::new(redis.clone(), &config.prefix, limit, config.rate_limit_fail);
        aura_ratelimit::RateLimitLayer::new(std::sync::Arc::new(limiter), key.clone(), "/aura.v1.Gateway/")
    });
    let (reporter, health) = grpc::health::<GatewayServer<GatewayService>>().await;
    let health_task = grpc::follow_redis::<GatewayServer<GatewayService>>(
        reporter,
        redis,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read TLS {what} {}: {e}", path.display()))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert, "certificate")?, read(key, "key")?);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| anyhow::anyhow!("invalid TLS certificate or key: {e}"))?;
    }
    tracing::info!(addr = %listener.local_addr()?, tls = config.tls.is_some(), "gateway listening");
    server
        // Trace: a span per call (child of the client's `traceparent` if it sent one); the
        // forwarded calls carry it on to the Scheduler and Events.
        .layer(aura_common::telemetry::TraceLayer)
        // Counts and times every call, including refused ones.
        .layer(aura_common::metrics::GrpcMetricsLayer::new(&config.metrics))
        // Who is calling: UNAUTHENTICATED before anything else is spent on the call.
        .layer(auth::AuthLayer::new(authenticator))
        // In-process first tier (tower-governor, twice the quota per tenant): sheds floods
        // that could never pass the global limit before they cost a Redis round trip.
        .layer(tower::util::option_layer(first_tier))
        // The global limit: one Redis token bucket per tenant and method group, shared by
        // every gateway replica.
        .layer(tower::util::option_layer(global))
        .add_service(health)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha())
        .add_service(
            GatewayServer::new(service)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(grpc::incoming(listener), shutdown.cancelled_owned())
        .await?;
    let _ = health_task.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Calls count against their tenant (anonymous when auth is off) and method group: the
/// task API of external workers has its own bucket, so busy workers cannot starve the
/// control plane.
fn rate_limit_key() -> aura_ratelimit::KeyFn {
    std::sync::Arc::new(|extensions, path| {
        let tenant =
            extensions.get::<auth::Tenant>().map_or_else(|| "anonymous".to_string(), |t| t.0.clone());
        let group = match path.rsplit('/').next() {
            Some("PollTasks" | "ReportTaskResults" | "HeartbeatTasks") => "tasks",
            _ => "default",
        };
        (tenant, group)
    })
}
