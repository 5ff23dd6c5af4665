//! The engine's one error type; the Scheduler maps it to gRPC statuses in one place.

use aura_bus::BusError;
use aura_queue::QueueError;

/// Errors of engine operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request field is invalid; `field` names it as the API spells it.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field path, e.g. `spec.steps[2].depends_on`.
        field: String,
        /// What is wrong, in words a person can act on.
        reason: String,
    },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation does not apply in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis is unreachable or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Stored data this version cannot read (a bug or a foreign writer).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl EngineError {
    /// Shorthand for `Invalid`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The same error again, for each item of a batch that one failure ended (redis's
    /// error is not `Clone`; its kind, and so the status it maps to, is kept).
    pub fn duplicate(&self) -> Self {
        match self {
            EngineError::Invalid { field, reason } => EngineError::invalid(field.clone(), reason.clone()),
            EngineError::NotFound(m) => EngineError::NotFound(m.clone()),
            EngineError::FailedPrecondition(m) => EngineError::FailedPrecondition(m.clone()),
            EngineError::Redis(e) => {
                EngineError::Redis(redis::RedisError::from((e.kind(), "redis failed", e.to_string())))
            }
            EngineError::Corrupt(m) => EngineError::Corrupt(m.clone()),
        }
    }
}

impl From<QueueError> for EngineError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::Redis(e) => EngineError::Redis(e),
            QueueError::Invalid { field, reason } => EngineError::invalid(field, reason),
            QueueError::Protocol(p) => EngineError::Corrupt(p),
        }
    }
}

impl From<BusError> for EngineError {
    fn from(err: BusError) -> Self {
        match err {
            BusError::Redis(e) => EngineError::Redis(e),
            BusError::Invalid(reason) => EngineError::invalid("topic", reason),
            other => EngineError::FailedPrecondition(other.to_string()),
        }
    }
}
