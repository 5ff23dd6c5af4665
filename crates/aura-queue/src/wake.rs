//! Blocking claims without polling: one pub/sub subscription per process (pattern
//! `<prefix>:wake:*`) turns "a lane went from empty to non-empty" messages into local
//! notifications. A claimer subscribes *before* it tries to claim, so a job enqueued between
//! its empty claim and its wait still wakes it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Process-wide wake-up fan-out.
pub struct Waker {
    /// One version counter per lane; claimers watch the lanes they claim from.
    lanes: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Bumped on every (re)subscription: messages may have been missed while disconnected.
    all: watch::Sender<u64>,
}

/// What a claimer waits on.
pub struct Subscription {
    receivers: Vec<watch::Receiver<u64>>,
}

impl Subscription {
    /// Resolves when any watched lane (or the connection) changed since the subscription.
    pub async fn changed(mut self) {
        let futures = self.receivers.iter_mut().map(|r| Box::pin(r.changed()));
        let _ = futures::future::select_all(futures).await;
    }
}

impl Waker {
    pub(crate) fn start(
        redis_url: &str,
        wake_prefix: String,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let client = aura_common::redis::client(redis_url)?;
        let waker = Arc::new(Waker { lanes: Mutex::new(HashMap::new()), all: watch::channel(0).0 });
        let this = waker.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let session = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.psubscribe(format!("{wake_prefix}*")).await?;
                    this.all.send_modify(|v| *v += 1);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let channel = msg.get_channel_name();
                        if let Some(lane) = channel.strip_prefix(wake_prefix.as_str()) {
                            this.bump(lane);
                        }
                    }
                    Ok::<_, redis::RedisError>(())
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = session => {
                        if let Err(err) = result {
                            tracing::debug!(%err, "wake subscription lost; reconnecting");
                        }
                    }
                }
                // Whatever was published while disconnected is lost: wake every claimer.
                this.all.send_modify(|v| *v += 1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        Ok(waker)
    }

    fn bump(&self, lane: &str) {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = lanes.get(lane) {
            tx.send_modify(|v| *v += 1);
        }
    }

    /// A number that changes whenever `lane` is published to or the subscription was lost
    /// (messages may have been missed): a cache entry stamped with it is stale once it
    /// differs. Registers the lane, so the first call only starts counting.
    pub fn generation(&self, lane: &str) -> u64 {
        let mut map = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = *map.entry(lane.to_string()).or_insert_with(|| watch::channel(0).0).borrow();
        lane.wrapping_add(*self.all.borrow())
    }

    /// Starts watching `lanes`; call before claiming.
    pub fn watch(&self, lanes: &[String]) -> Subscription {
        let mut map = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let mut receivers: Vec<_> = lanes
            .iter()
            .map(|lane| map.entry(lane.clone()).or_insert_with(|| watch::channel(0).0).subscribe())
            .collect();
        receivers.push(self.all.subscribe());
        Subscription { receivers }
    }
}
