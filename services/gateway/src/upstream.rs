//! Channels to the internal services, and requests carrying the caller's deadline.

use std::time::Duration;

use tonic::{Request, transport::Channel};

/// Default deadline of a forwarded call when the caller set none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// A channel balanced over `urls`.
pub fn channel(urls: &[String]) -> anyhow::Result<Channel> {
    aura_common::grpc::balanced_channel(urls).map_err(|e| anyhow::anyhow!("upstream: {e}"))
}

/// A fresh upstream request with the caller's message and deadline (or `default`). Only the
/// deadline crosses over: the caller's other headers (credentials, hop-by-hop) stay here.
pub fn forward<T>(req: Request<T>, default: Duration) -> Request<T> {
    let deadline = aura_common::grpc::grpc_timeout(req.metadata()).unwrap_or(default);
    let mut out = Request::new(req.into_inner());
    out.set_timeout(deadline);
    out
}
