//! The run engine behind the Scheduler, free of gRPC types.
//!
//! # Layout
//! - [`spec`] — workflow specs (serde: stored as JSON, written by users as YAML) and their
//!   validation.
//! - [`registry`] — versioned workflow registration in Redis, with an in-process cache.
//! - [`runs`] — a run is a queue flow (`aura_queue`): start (single and bulk, idempotent),
//!   read, list, cancel.
//! - [`tasks`] — the task API workers call (poll, report, heartbeat) and the lease reaper,
//!   publishing every run and step transition as an event.
//! - [`metrics`] — per-minute run counters in Redis behind `GetMetrics`.
//! - [`schedules`] — cron schedules that fire once per tick across replicas.
//! - [`validate`] — stateless checks of request fields, shared by the Scheduler and the
//!   Gateway.
#![forbid(unsafe_code)]

mod error;
pub mod ids;
pub mod metrics;
pub mod registry;
pub mod runs;
pub mod schedules;
pub mod spec;
pub mod tasks;
pub mod validate;

use std::sync::Arc;

pub use error::EngineError;

/// Everything the engine needs, shared by the Scheduler's handlers. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) queue: aura_queue::Queue,
    pub(crate) registry: Arc<registry::Registry>,
    pub(crate) config: Arc<EngineConfig>,
    /// Lifecycle events for `workflows.<name>` and run metrics (see `tasks::run_emitter`).
    pub(crate) emitter: tokio::sync::mpsc::Sender<Vec<tasks::LifecycleEvent>>,
}

/// Tunables, with defaults that suit a laptop and a small cluster alike.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Largest accepted workflow spec, as JSON bytes.
    pub max_spec_bytes: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: std::time::Duration,
    /// Key prefix in Redis.
    pub prefix: String,
    /// How long finished runs (with their steps and events) and plain jobs are kept.
    pub retention: aura_queue::Retention,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_spec_bytes: 1024 * 1024,
            idempotency_ttl: std::time::Duration::from_secs(24 * 3600),
            prefix: "aura".into(),
            retention: aura_queue::Retention::default(),
        }
    }
}

impl Engine {
    /// Assembles the engine; starts its event emitter (so: inside a tokio runtime).
    pub fn new(queue: aura_queue::Queue, bus: aura_bus::Bus, config: EngineConfig) -> Self {
        let registry = Arc::new(registry::Registry::new(
            queue.conn(),
            &config.prefix,
            queue.waker(),
            queue.keys().wake_prefix(),
        ));
        // Bounded: when Redis falls far behind, transitions wait rather than memory grow.
        let (emitter, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(tasks::run_emitter(bus, queue.conn(), config.prefix.clone(), rx));
        Engine { queue, registry, config: Arc::new(config), emitter }
    }

    /// The queue underneath (for admin calls: stats, pause, dead letters).
    pub fn queue(&self) -> &aura_queue::Queue {
        &self.queue
    }

    /// Largest accepted spec, bytes.
    pub fn max_spec_bytes(&self) -> usize {
        self.config.max_spec_bytes
    }

    /// The workflow registry.
    pub fn registry(&self) -> &registry::Registry {
        &self.registry
    }
}
