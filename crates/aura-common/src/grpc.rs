//! What every AURA gRPC server has in common: listeners with TCP_NODELAY, `grpc.health.v1`
//! following Redis's reachability, and server reflection in both flavours (v1 and v1alpha,
//! so every grpcurl version can `list` and `describe`).

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
};
use tonic_reflection::server::{
    v1::{ServerReflection as V1, ServerReflectionServer as V1Server},
    v1alpha::{ServerReflection as V1Alpha, ServerReflectionServer as V1AlphaServer},
};

use crate::redis::RedisConn;

/// The gRPC status code in a response head, if there is one there. Errors answer
/// trailers-only, so their code is in the head; a success's is in trailers a tower layer
/// does not see, so `None` means OK (or a stream still running).
pub fn head_status(headers: &tonic::codegen::http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Binds a listener. Tests bind `127.0.0.1:0` and hand the bound listener to `serve`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Wraps a bound listener so every accepted socket gets TCP_NODELAY. Without it, Nagle and
/// delayed ACKs add ~40 ms stalls to small gRPC messages.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)))
}

/// The health entry that says only "this process is alive": SERVING from start to exit,
/// whatever Redis does. Liveness probes check it (a Redis outage must not restart every
/// pod); readiness probes check "" (overall), which follows Redis.
pub const LIVENESS: &str = "liveness";

/// Creates the `grpc.health.v1.Health` service and the reporter that flips it; everything
/// but [`LIVENESS`] starts NOT_SERVING until Redis answers.
pub async fn health<S: NamedService>() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    reporter.set_service_status("", ServingStatus::NotServing).await;
    reporter.set_not_serving::<S>().await;
    (reporter, service)
}

/// Keeps the health of service `S` (and the overall "" entry) equal to "Redis answers a
/// PING", checked every `interval`, until `shutdown` fires; then reports NOT_SERVING for good
/// so load balancers stop sending new work before the server drains.
pub fn follow_redis<S: NamedService>(
    reporter: HealthReporter,
    redis: RedisConn,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        loop {
            let healthy = redis.is_healthy().await;
            if last != Some(healthy) {
                let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
                if healthy {
                    tracing::info!(service = S::NAME, "redis reachable, serving");
                } else {
                    tracing::warn!(service = S::NAME, "redis unreachable, not serving");
                }
                reporter.set_service_status("", status).await;
                reporter.set_service_status(S::NAME, status).await;
                last = Some(healthy);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        reporter.set_service_status("", ServingStatus::NotServing).await;
        reporter.set_service_status(S::NAME, ServingStatus::NotServing).await;
    })
}

fn reflection_builder(extra: &[&'static [u8]]) -> tonic_reflection::server::Builder<'static> {
    // Both flavours get every descriptor set, or one of them lists only part of the services.
    let mut builder = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(aura_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for set in extra {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    builder
}

/// Server reflection, v1.
pub fn reflection_v1() -> V1Server<impl V1> {
    reflection_v1_with(&[])
}

/// Server reflection, v1alpha (older grpcurl and many client libraries use it).
pub fn reflection_v1alpha() -> V1AlphaServer<impl V1Alpha> {
    reflection_v1alpha_with(&[])
}

/// Server reflection, v1, also describing the services of `extra` descriptor sets (the
/// Gateway's optional Envoy rate limit service).
pub fn reflection_v1_with(extra: &[&'static [u8]]) -> V1Server<impl V1> {
    reflection_builder(extra).build_v1().expect("AURA's embedded descriptor sets are valid")
}

/// Server reflection, v1alpha, with `extra` descriptor sets.
pub fn reflection_v1alpha_with(extra: &[&'static [u8]]) -> V1AlphaServer<impl V1Alpha> {
    reflection_builder(extra).build_v1alpha().expect("AURA's embedded descriptor sets are valid")
}

/// A channel balanced over `urls` (`http://host:port`, or `https://host:port` checked
/// against `tls`), connecting lazily: a service starts even while its upstream is down, and
/// calls then fail UNAVAILABLE until it is back.
pub fn balanced_channel(
    urls: &[String],
    tls: Option<&crate::tls::ClientTls>,
) -> Result<tonic::transport::Channel, String> {
    let endpoints = urls
        .iter()
        .map(|u| {
            let endpoint = tonic::transport::Endpoint::from_shared(u.clone())
                .map_err(|e| format!("invalid endpoint {u:?}: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
            if endpoint.uri().scheme_str() != Some("https") {
                return Ok(endpoint);
            }
            match tls {
                Some(tls) => endpoint.tls_config(tls.config()).map_err(|e| format!("endpoint {u:?}: {e}")),
                None => {
                    // No CA is compiled in: every handshake fails, and calls with it.
                    tracing::warn!(
                        endpoint = %u,
                        "https endpoint without --internal-tls-ca: calls to it will fail UNAVAILABLE"
                    );
                    Ok(endpoint)
                }
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err("no endpoint configured".into());
    }
    Ok(tonic::transport::Channel::balance_list(endpoints.into_iter()))
}

/// The caller's deadline from a `grpc-timeout` header (`<digits><unit>`), if any.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(timeout_of("50m"), Some(Duration::from_millis(50)));
        assert_eq!(timeout_of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout_of("x"), None);
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
