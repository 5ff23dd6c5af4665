//! Channels to the internal services, and requests carrying the caller's deadline.

use std::time::Duration;

use tonic::{
    Request,
    transport::{Channel, Endpoint},
};

/// Default deadline of a forwarded call when the caller set none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// A channel balanced over `urls`, connecting lazily (the gateway starts even while an
/// upstream is down; calls then fail UNAVAILABLE).
pub fn channel(urls: &[String]) -> anyhow::Result<Channel> {
    let endpoints = urls
        .iter()
        .map(|u| {
            Ok(Endpoint::from_shared(u.clone())?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!endpoints.is_empty(), "no upstream endpoint configured");
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// A fresh upstream request with the caller's message and deadline (or `default`). Only the
/// deadline crosses over: the caller's other headers (credentials, hop-by-hop) stay here.
pub fn forward<T>(req: Request<T>, default: Duration) -> Request<T> {
    let deadline = aura_common::grpc::grpc_timeout(req.metadata()).unwrap_or(default);
    let mut out = Request::new(req.into_inner());
    out.set_timeout(deadline);
    out
}
