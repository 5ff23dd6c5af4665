//! Engine errors → gRPC statuses, in one place.

use aura_common::status;
use aura_engine::EngineError;
use tonic::Status;

/// Maps an engine error to the precise status a client can act on.
pub fn to_status(err: EngineError) -> Status {
    match err {
        EngineError::Invalid { field, reason } => status::invalid_field(field, reason),
        EngineError::NotFound(msg) => Status::not_found(msg),
        EngineError::FailedPrecondition(msg) => Status::failed_precondition(msg),
        EngineError::Redis(err) if aura_common::redis::is_unavailable(&err) => {
            status::redis_unavailable(&err)
        }
        EngineError::Redis(err) => {
            tracing::error!(%err, "redis command failed");
            Status::internal(format!("redis command failed: {err}"))
        }
        EngineError::Corrupt(msg) => {
            tracing::error!(%msg, "corrupt stored data");
            Status::internal(format!("corrupt stored data: {msg}"))
        }
    }
}
