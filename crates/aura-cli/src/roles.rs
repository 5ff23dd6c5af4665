//! `aura serve <role>`: bind, serve, drain on SIGTERM/SIGINT, reload the TLS certificate on
//! SIGHUP.

use std::net::SocketAddr;

use aura_common::{CancellationToken, grpc, metrics, shutdown};
use prometheus_client::metrics::{family::Family, gauge::Gauge};

use crate::config::{Role, Settings};

/// Serves one role until a shutdown signal.
pub async fn serve(role: Role, settings: Settings) -> anyhow::Result<()> {
    let listen = settings.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], role.default_port())));
    let metrics_listen = settings
        .metrics_listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], role.default_metrics_port())));
    let listener = grpc::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let metrics_listener = metrics::bind(metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {metrics_listen}: {e}"))?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let tls = settings.server_tls()?;
    #[cfg(unix)]
    if let Some(tls) = &tls {
        aura_common::tls::reload_on_sighup(tls.clone(), token.clone())
            .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP (certificate reload): {e}"))?;
    }
    let registry = registry(role);
    tokio::spawn(metrics::serve(metrics_listener, registry.clone(), token.clone()));
    run_role(role, &settings, tls, listener, token, registry).await
}

/// Runs a role on an already bound listener (shared by `serve` and `up`), serving TLS with
/// `tls` if set.
pub async fn run_role(
    role: Role,
    s: &Settings,
    tls: Option<aura_common::tls::ServerTls>,
    listener: tokio::net::TcpListener,
    token: CancellationToken,
    registry: metrics::SharedRegistry,
) -> anyhow::Result<()> {
    match role {
        Role::Gateway => {
            let config = aura_gateway::Config {
                scheduler_urls: s.scheduler_urls.clone(),
                events_urls: s.events_urls.clone(),
                redis_url: s.redis_url.clone(),
                metrics: registry,
                insecure_no_auth: s.insecure_no_auth,
                api_keys_file: s.api_keys_file.clone(),
                rate_limit: s.rate_limit,
                rate_limit_groups: s.rate_limit_groups.clone(),
                envoy_rls: s.envoy_rls,
                max_message_bytes: s.max_message_bytes,
                max_in_flight: s.max_in_flight,
                method_costs: s.method_costs.clone(),
                tls,
                internal_tls: s.client_tls()?,
                rate_limit_fail: if s.rate_limit_fail_closed {
                    aura_ratelimit::FailMode::Closed
                } else {
                    aura_ratelimit::FailMode::OpenToLocal
                },
                ..Default::default()
            };
            aura_gateway::serve(config, listener, token).await
        }
        Role::Scheduler => {
            let config = aura_scheduler::Config {
                redis_url: s.redis_url.clone(),
                partitions: s.partitions,
                key_concurrency_cap: s.key_concurrency_cap,
                metrics: registry,
                tls,
                ..Default::default()
            };
            aura_scheduler::serve(config, listener, token).await
        }
        Role::Worker => {
            let config = aura_worker::Config {
                scheduler_urls: s.scheduler_urls.clone(),
                redis_url: s.redis_url.clone(),
                queues: s.queues.clone(),
                concurrency: s.concurrency,
                drain_timeout: s.drain_timeout,
                llm_api_key: s.llm_api_key.clone(),
                kind_concurrency: s.kind_concurrency.clone(),
                metrics: registry,
                tls,
                internal_tls: s.client_tls()?,
                ..Default::default()
            };
            aura_worker::serve(config, listener, token).await
        }
        Role::Events => {
            let config = aura_events::Config {
                redis_url: s.redis_url.clone(),
                partitions: s.partitions,
                metrics: registry,
                tls,
                ..Default::default()
            };
            aura_events::serve(config, listener, token).await
        }
    }
}

/// The role's Prometheus registry, with build info; each service registers its own series.
pub fn registry(role: Role) -> metrics::SharedRegistry {
    let registry = metrics::registry();
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![
        ("version".to_string(), aura_common::VERSION.to_string()),
        ("role".to_string(), format!("{role:?}").to_lowercase()),
    ])
    .set(1);
    registry.lock().unwrap_or_else(|p| p.into_inner()).register("build_info", "AURA build and role", info);
    registry
}
