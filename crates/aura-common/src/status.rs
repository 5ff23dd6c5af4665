//! Building precise gRPC statuses: INVALID_ARGUMENT with `google.rpc.BadRequest` field
//! violations, RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`, UNAVAILABLE for Redis outages.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT naming the offending field, with a `BadRequest` detail.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    let field = field.into();
    let description = description.into();
    let details = ErrorDetails::with_bad_request_violation(field.clone(), description.clone());
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
}

/// RESOURCE_EXHAUSTED with `RetryInfo` and a `retry-after` header (seconds, rounded up).
pub fn resource_exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    let details = ErrorDetails::with_retry_info(Some(retry_after));
    let mut status = Status::with_error_details(Code::ResourceExhausted, message, details);
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(value) = secs.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// UNAVAILABLE for a Redis outage; clients should retry with backoff.
pub fn redis_unavailable(err: &crate::redis::RedisError) -> Status {
    Status::unavailable(format!("redis is unavailable ({err}); retry with backoff"))
}
