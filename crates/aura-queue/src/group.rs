//! Group commit for [`crate::Queue::start_flow`] (see `aura_common::group`): each script
//! call has fixed costs inside Redis (the clock, a block of FIFO sequence numbers, the
//! lane's empty check, the listing ZADDs) that `start_flows` pays once per call, so single
//! starts arriving together go together, up to [`crate::START_FLOWS_PER_CALL`] per call.

use tokio::sync::oneshot;

use crate::{FlowStart, NewFlow, QueueError};

/// Per partition: the starts waiting for a call.
pub(crate) type StartGroups = aura_common::group::Pending<usize, (NewFlow, Reply)>;

type Reply = oneshot::Sender<Result<FlowStart, QueueError>>;

/// A copy of `err` for each caller of a failed shared call.
pub(crate) fn duplicate(err: &QueueError) -> QueueError {
    match err {
        QueueError::Redis(e) => {
            QueueError::Redis(redis::RedisError::from((e.kind(), "redis failed", e.to_string())))
        }
        QueueError::Invalid { field, reason } => QueueError::Invalid { field, reason: reason.clone() },
        QueueError::Protocol(p) => QueueError::Protocol(p.clone()),
    }
}
