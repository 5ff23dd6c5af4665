//! Plumbing every AURA service shares.
//!
//! # Layout
//! - [`redis`] — one connection type for a single node or a Redis Cluster, reconnecting with
//!   backoff, and a health probe.
//! - [`group`] — group commit: concurrent requests for one resource share calls.
//! - [`grpc`] — listeners with TCP_NODELAY, health + reflection (v1 and v1alpha) wiring.
//! - [`status`] — building precise `tonic::Status` values (field violations, retry info).
//! - [`shutdown`] — the SIGTERM/SIGINT contract.
//! - [`telemetry`] — logs, OpenTelemetry traces and W3C trace-context propagation.
//! - [`metrics`] — the Prometheus `/metrics` HTTP endpoint.
//! - [`tls`] — TLS listeners whose certificate reloads (SIGHUP), and the CA that channels
//!   to internal services trust.
#![forbid(unsafe_code)]

pub mod group;
pub mod grpc;
pub mod metrics;
pub mod redis;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use tokio_util::sync::CancellationToken;

/// AURA's version, reported by services and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
