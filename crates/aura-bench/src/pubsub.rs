//! Scenario 5: raw Redis pub/sub latency, the floor under AURA's Events figure.
//!
//! `subscribers` connections (one per subscriber, each its own socket, as independent
//! consumers would have) SUBSCRIBE to one channel. One publisher connection sends
//! `warmup + messages` messages one at a time: each carries its send time, and the next
//! is only published once every subscriber has received the previous one (so this is
//! unloaded latency, not throughput). Figures: per delivery (publish → one subscriber's
//! receive) and per message (publish → the last subscriber's receive), nearest-rank
//! percentiles. Everything runs in this one process over loopback.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use futures::StreamExt;
use tokio::sync::Notify;

/// Latencies of one setting, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct PubSubResult {
    /// Measured messages.
    pub messages: usize,
    /// Publish → a subscriber's receive, every delivery.
    pub delivery_ms: Vec<f64>,
    /// Publish → the last subscriber's receive, per message.
    pub all_received_ms: Vec<f64>,
}

/// Nearest-rank percentile of unsorted values (`p` in 0..=100).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs one setting.
pub async fn run(
    url: &str,
    subscribers: usize,
    warmup: usize,
    messages: usize,
) -> anyhow::Result<PubSubResult> {
    let client = redis::Client::open(url)?;
    let channel = format!("bench:lat:{subscribers}");
    let base = Instant::now();
    let received = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(Notify::new());
    let deliveries: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(subscribers * messages)));

    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut pubsub = client.get_async_pubsub().await.context("subscriber connection")?;
        pubsub.subscribe(&channel).await?;
        let (received, all_in, deliveries) = (received.clone(), all_in.clone(), deliveries.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            let mut mine = Vec::with_capacity(messages);
            while let Some(msg) = stream.next().await {
                let now_ns = base.elapsed().as_nanos() as u64;
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload == "stop" {
                    break;
                }
                let (index, sent_ns) = payload.split_once(':').unwrap_or(("0", "0"));
                let (index, sent_ns): (usize, u64) =
                    (index.parse().unwrap_or(0), sent_ns.parse().unwrap_or(0));
                if index >= warmup {
                    mine.push(now_ns.saturating_sub(sent_ns) as f64 / 1e6);
                }
                if received.fetch_add(1, Ordering::SeqCst) + 1 == subscribers {
                    all_in.notify_one();
                }
            }
            deliveries.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
        }));
    }

    let mut publisher = client.get_multiplexed_async_connection().await?;
    // Every subscription is registered before the first message.
    let numsub: (String, usize) =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut publisher).await?;
    ensure!(numsub.1 == subscribers, "only {} of {subscribers} subscribed", numsub.1);

    let mut all_received_ms = Vec::with_capacity(messages);
    for index in 0..warmup + messages {
        received.store(0, Ordering::SeqCst);
        let waiter = all_in.notified();
        tokio::pin!(waiter);
        waiter.as_mut().enable();
        let sent = Instant::now();
        let payload = format!("{index}:{}", (sent - base).as_nanos());
        let reached: usize =
            redis::cmd("PUBLISH").arg(&channel).arg(payload).query_async(&mut publisher).await?;
        ensure!(reached == subscribers, "message reached {reached} of {subscribers}");
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .context("a subscriber never got a message")?;
        if index >= warmup {
            all_received_ms.push(sent.elapsed().as_secs_f64() * 1e3);
        }
    }
    let _: usize = redis::cmd("PUBLISH").arg(&channel).arg("stop").query_async(&mut publisher).await?;
    for task in tasks {
        task.await?;
    }
    let delivery_ms = std::mem::take(&mut *deliveries.lock().unwrap_or_else(|e| e.into_inner()));
    ensure!(delivery_ms.len() == subscribers * messages, "lost deliveries");
    Ok(PubSubResult { messages, delivery_ms, all_received_ms })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
