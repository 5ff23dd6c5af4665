//! Channels to the internal services, and requests carrying the caller's deadline.

use std::time::Duration;

use tonic::{Request, transport::Channel};

/// Default deadline of a forwarded call when the caller set none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// A channel balanced over `urls` (`https://` ones checked against `tls`).
pub fn channel(urls: &[String], tls: Option<&aura_common::tls::ClientTls>) -> anyhow::Result<Channel> {
    aura_common::grpc::balanced_channel(urls, tls).map_err(|e| anyhow::anyhow!("upstream: {e}"))
}

/// The caller's deadline (or `default`), to pass to [`upstream`].
pub fn deadline<T>(req: &Request<T>, default: Duration) -> Duration {
    aura_common::grpc::grpc_timeout(req.metadata()).unwrap_or(default)
}

/// A fresh upstream request carrying `msg`, `deadline` and the current trace context.
pub fn upstream<T>(msg: T, deadline: Duration) -> Request<T> {
    let mut out = Request::new(msg);
    out.set_timeout(deadline);
    aura_common::telemetry::inject(out.metadata_mut());
    out
}
