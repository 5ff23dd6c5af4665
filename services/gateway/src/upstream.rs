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

/// Parses a `grpc-timeout` header value (`<digits><unit>`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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

/// A fresh upstream request with the caller's message and deadline (or `default`). Only the
/// deadline crosses over: the caller's other headers (credentials, hop-by-hop) stay here.
pub fn forward<T>(req: Request<T>, default: Duration) -> Request<T> {
    let deadline = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(default);
    let mut out = Request::new(req.into_inner());
    out.set_timeout(deadline);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
