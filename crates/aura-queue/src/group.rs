//! Group commit for [`Queue::start_flow`]: concurrent single starts share script calls.
//!
//! Each script call has fixed costs inside Redis (the clock, a block of FIFO sequence
//! numbers, the lane's empty check, the listing ZADDs) that `start_flows` pays once per
//! call. Many clients each starting one run would pay them once per run. Here the first
//! start of a partition goes out at once, and starts that arrive while a call of that
//! partition is in flight wait for it to return and then go together, up to
//! [`START_FLOWS_PER_CALL`] per call. An idle queue therefore adds no delay; a busy one
//! turns its queueing time into batching.

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::{FlowStart, NewFlow, QueueError, START_FLOWS_PER_CALL};

type Reply = oneshot::Sender<Result<FlowStart, QueueError>>;

#[derive(Default)]
struct Lane {
    waiting: Vec<(NewFlow, Reply)>,
    /// A drain task owns this partition's calls.
    busy: bool,
}

/// Pending single starts, per partition.
pub(crate) struct StartGroups {
    lanes: Vec<Mutex<Lane>>,
}

impl StartGroups {
    pub(crate) fn new(partitions: usize) -> Self {
        StartGroups { lanes: (0..partitions).map(|_| Mutex::default()).collect() }
    }

    /// Queues `flow`; returns true when the caller must start the drain task (nobody owns
    /// the partition's calls).
    pub(crate) fn push(&self, partition: usize, flow: NewFlow, reply: Reply) -> bool {
        let mut lane = self.lanes[partition].lock().expect("start group lock");
        lane.waiting.push((flow, reply));
        !std::mem::replace(&mut lane.busy, true)
    }

    /// The next call's worth of waiting starts; empty (and the partition released) when
    /// none wait.
    pub(crate) fn take(&self, partition: usize) -> Vec<(NewFlow, Reply)> {
        let mut lane = self.lanes[partition].lock().expect("start group lock");
        if lane.waiting.is_empty() {
            lane.busy = false;
            return Vec::new();
        }
        let n = lane.waiting.len().min(START_FLOWS_PER_CALL);
        lane.waiting.drain(..n).collect()
    }
}

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
