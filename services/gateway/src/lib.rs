//! The Gateway: `aura.v1.Gateway`, the only public service. It forwards to the Scheduler
//! and Events over balanced tonic channels, propagating the caller's deadline.
//!
//! # Layout
//! - [`serve`] — wiring, and the tower stack read top to bottom.
//! - `service.rs`: the handlers (forwarding, `WatchRun`).
//! - `validate.rs`: structural checks of every request before it is forwarded.
//! - `upstream.rs`: channels to the internal services and deadline propagation.
//! - `envoy_rls.rs`: Envoy's rate limit service on the same limiter (`--envoy-rls`).
//! - `size_limit.rs`: over-size requests → RESOURCE_EXHAUSTED.
#![forbid(unsafe_code)]

pub mod auth;
pub mod envoy_rls;
mod load_shed;
mod service;
mod size_limit;
pub mod tenancy;
mod upstream;
mod validate;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aura_common::{CancellationToken, grpc};
use aura_proto::{
    envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer,
    v1::gateway_server::GatewayServer,
};
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
    /// Limits of method groups ([`METHOD_GROUPS`]) that differ from the default; a
    /// tenant's override in Redis still wins.
    pub rate_limit_groups: BTreeMap<String, aura_ratelimit::Limit>,
    /// What the limiter does while Redis is unreachable.
    pub rate_limit_fail: aura_ratelimit::FailMode,
    /// Serve TLS with this certificate (reloadable: keep a clone to call `reload`).
    pub tls: Option<aura_common::tls::ServerTls>,
    /// The CA that `https://` Scheduler and Events endpoints are checked against.
    pub internal_tls: Option<aura_common::tls::ClientTls>,
    /// Serve Envoy's `envoy.service.ratelimit.v3.RateLimitService` on the same listener
    /// (`--envoy-rls`). Off by default: it takes no API key (see [`serve`]).
    pub envoy_rls: bool,
    /// Most Gateway calls in flight at once; more are answered UNAVAILABLE (load shedding).
    pub max_in_flight: usize,
    /// Tokens one call of a method takes (methods not named: 1).
    pub method_costs: BTreeMap<String, u32>,
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
            rate_limit_groups: BTreeMap::new(),
            rate_limit_fail: aura_ratelimit::FailMode::OpenToLocal,
            tls: None,
            internal_tls: None,
            envoy_rls: false,
            max_in_flight: 10_000,
            method_costs: default_method_costs(),
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
        upstream::channel(&config.scheduler_urls, config.internal_tls.as_ref())?,
        upstream::channel(&config.events_urls, config.internal_tls.as_ref())?,
        shutdown.clone(),
    );
    let key = rate_limit_key();
    // One limiter for the tower layer and Envoy's rate limit service: the same buckets.
    let limiter = Arc::new(
        aura_ratelimit::RateLimiter::new(
            redis.clone(),
            &config.prefix,
            // Without a default limit the layer is off and the Envoy service leaves
            // descriptors without a limit of their own unlimited; this value is then unused.
            config.rate_limit.unwrap_or(aura_ratelimit::Limit { rps: 1, burst: 1 }),
            config.rate_limit_fail,
        )
        .with_group_limits(config.rate_limit_groups.clone()),
    );
    let first_tier = config.rate_limit.map(|default| {
        // Twice the largest limit of any group, or it would shed calls the global limit admits.
        let largest = config.rate_limit_groups.values().fold(default, |a, b| aura_ratelimit::Limit {
            rps: a.rps.max(b.rps),
            burst: a.burst.max(b.burst),
        });
        aura_ratelimit::first_tier(largest, key.clone(), GATEWAY_PATHS)
    });
    let global = config.rate_limit.map(|_| {
        aura_ratelimit::RateLimitLayer::new(limiter.clone(), key.clone(), GATEWAY_PATHS)
            .with_metrics(&config.metrics)
            .with_costs(config.method_costs.clone())
    });
    let envoy_rls = config.envoy_rls.then(|| {
        tracing::info!(
            "serving envoy.service.ratelimit.v3.RateLimitService (no API key; keep it inside the mesh)"
        );
        RateLimitServiceServer::new(envoy_rls::EnvoyRateLimit::new(
            limiter.clone(),
            config.rate_limit.is_some(),
        ))
    });
    let extra_descriptors: &[&'static [u8]] =
        if config.envoy_rls { &[aura_proto::ENVOY_FILE_DESCRIPTOR_SET] } else { &[] };
    let (reporter, health) = grpc::health::<GatewayServer<GatewayService>>().await;
    let health_task = grpc::follow_redis::<GatewayServer<GatewayService>>(
        reporter,
        redis,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    tracing::info!(addr = %listener.local_addr()?, tls = config.tls.is_some(), "gateway listening");
    tonic::transport::Server::builder()
        // Trace: a span per call (child of the client's `traceparent` if it sent one); the
        // forwarded calls carry it on to the Scheduler and Events.
        .layer(aura_common::telemetry::TraceLayer)
        // Counts and times every call, including refused ones.
        .layer(aura_common::metrics::GrpcMetricsLayer::new(&config.metrics))
        // Over-size requests: RESOURCE_EXHAUSTED naming --max-message-bytes, rather than
        // tonic's OUT_OF_RANGE, and before the message is buffered.
        .layer(size_limit::MessageSizeLayer::new(config.max_message_bytes))
        // Who is calling: UNAUTHENTICATED before anything else is spent on the call. Only
        // aura.v1.Gateway calls: health, reflection and Envoy's rate limit service take no
        // key (Envoy calls the latter from inside the mesh, for requests it has not
        // authenticated yet, and has no AURA key to send).
        .layer(auth::AuthLayer::new(authenticator))
        // In-process first tier (tower-governor, twice the quota per tenant): sheds floods
        // that could never pass the global limit before they cost a Redis round trip.
        .layer(tower::util::option_layer(first_tier))
        // The global limit: one Redis token bucket per tenant and method group, shared by
        // every gateway replica. Both tiers apply to aura.v1.Gateway calls only: Envoy's
        // rate limit calls are themselves decisions (limiting them would deny requests
        // because deciding about them was busy) and are not a tenant's traffic.
        .layer(tower::util::option_layer(global))
        // Load shed: past --max-in-flight calls at once, UNAVAILABLE at once rather than a
        // queue that only grows. (Timeouts: each forwarded call carries the caller's
        // deadline, or the method's default, to the Scheduler and Events.)
        .layer(load_shed::LoadShedLayer::new(config.max_in_flight))
        .add_service(health)
        .add_service(grpc::reflection_v1_with(extra_descriptors))
        .add_service(grpc::reflection_v1alpha_with(extra_descriptors))
        .add_service(
            GatewayServer::new(service)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        // Envoy's rate limit service, on the limiter above (`--envoy-rls`).
        .add_optional_service(envoy_rls)
        .serve_with_incoming_shutdown(
            aura_common::tls::incoming(listener, config.tls.as_ref()),
            shutdown.cancelled_owned(),
        )
        .await?;
    let _ = health_task.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The paths of the public API: what auth and rate limits apply to.
const GATEWAY_PATHS: &str = "/aura.v1.Gateway/";

/// The methods of `aura.v1.Gateway`, read from the compiled contract (so a
/// `--rate-limit-cost` naming a method that does not exist is refused at start).
pub fn gateway_methods() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(aura_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
    set.file
        .iter()
        .filter(|f| f.package() == "aura.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "Gateway")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

/// Tokens a call takes unless configured: a `StartRuns` call starts up to 1,000 runs.
pub fn default_method_costs() -> BTreeMap<String, u32> {
    BTreeMap::from([("StartRuns".to_string(), 10)])
}

/// The method groups calls are limited in (`--rate-limit-group <group>=<rps>/<burst>`).
pub const METHOD_GROUPS: &[&str] = &["default", "tasks"];

/// The method group of a gRPC path: the task API of external workers has its own bucket,
/// so busy workers cannot starve the control plane.
pub fn method_group(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("PollTasks" | "ReportTaskResults" | "HeartbeatTasks") => "tasks",
        _ => "default",
    }
}

/// Calls count against their tenant (anonymous when auth is off) and method group.
fn rate_limit_key() -> aura_ratelimit::KeyFn {
    Arc::new(|extensions, path| {
        let tenant =
            extensions.get::<auth::Tenant>().map_or_else(|| "anonymous".to_string(), |t| t.0.clone());
        (tenant, method_group(path))
    })
}
