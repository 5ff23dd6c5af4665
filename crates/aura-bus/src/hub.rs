//! Subscriptions: one Redis pattern subscription per distinct pattern per process, shared
//! by every local subscriber, with bounded per-subscriber buffers.
//!
//! A subscriber is registered for live events *before* its history is read, and the history
//! is read only once Redis has confirmed the pattern subscription, so nothing published in
//! between is missed; live events at or before the last replayed offset are
//! dropped, so nothing is seen twice. After a Redis reconnect, subscribers of a concrete
//! topic replay what they missed from the stream.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, EventRecord, Offset, Pattern};

/// Where a subscription starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// Only events published from now on.
    Live,
    /// The whole retained history of the single concrete topic, then live.
    Beginning,
    /// Events after this offset of the single concrete topic, then live.
    After(Offset),
}

struct LocalSub {
    patterns: Vec<Pattern>,
    tx: mpsc::Sender<Result<EventRecord, BusError>>,
    kind: SubKind,
}

/// Who reports a cut-off subscriber's lag, and with which resume offset.
enum SubKind {
    /// Live only: `tx` is the subscriber's own channel (no task in between); the hub
    /// reports the lag with the offset it last put into it.
    Direct { last: Option<Offset> },
    /// Replaying: `tx` feeds a forwarding task, which reports the lag once it sees the
    /// flag and its channel end, with the offset it last forwarded.
    Forwarded { lagged: Arc<AtomicBool> },
}

/// One subscription's events, in order per topic; ends with an error when the subscriber
/// lagged or history could not be resumed. Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Result<EventRecord, BusError>>,
    /// Unregisters a live-only subscription when dropped (a replaying one is unregistered
    /// by its forwarding task, which ends when this receiver is dropped).
    _guard: Option<SubGuard>,
}

impl Subscription {
    /// The next event; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Result<EventRecord, BusError>> {
        self.rx.recv().await
    }
}

impl futures::Stream for Subscription {
    type Item = Result<EventRecord, BusError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

struct Inner {
    bus: Bus,
    subs: Mutex<HashMap<u64, LocalSub>>,
    globs: Mutex<HashMap<String, usize>>,
    commands: mpsc::UnboundedSender<Command>,
    reconnects: watch::Sender<u64>,
    /// Globs Redis has confirmed on the current connection (PSUBSCRIBE answered).
    confirmed: watch::Sender<HashSet<String>>,
    next_id: AtomicU64,
    buffer: usize,
    metrics: HubMetrics,
}

/// The hub's Prometheus series (registered by the Events service).
#[derive(Clone, Debug)]
pub struct HubMetrics {
    /// Events handed to local subscribers.
    pub delivered: prometheus_client::metrics::counter::Counter,
    /// Subscribers cut off for falling behind (told to resume from their offset).
    pub cut_off: prometheus_client::metrics::counter::Counter,
    /// Redis subscription (re)connections after the first.
    pub reconnects: prometheus_client::metrics::counter::Counter,
    /// Publish (Redis time) → arrival at this hub, seconds.
    pub lag: prometheus_client::metrics::histogram::Histogram,
}

impl Default for HubMetrics {
    fn default() -> Self {
        HubMetrics {
            delivered: Default::default(),
            cut_off: Default::default(),
            reconnects: Default::default(),
            lag: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
        }
    }
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// The subscription hub of one process. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the hub's Redis connection task. `buffer` bounds each subscriber's queue.
    pub fn start(
        bus: Bus,
        redis_url: &str,
        buffer: usize,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        let client = aura_common::redis::client(redis_url)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            bus,
            subs: Mutex::new(HashMap::new()),
            globs: Mutex::new(HashMap::new()),
            commands,
            reconnects: watch::channel(0).0,
            confirmed: watch::channel(HashSet::new()).0,
            next_id: AtomicU64::new(1),
            buffer,
            metrics: HubMetrics::default(),
        });
        tokio::spawn(run_connection(inner.clone(), client, command_rx, shutdown));
        Ok(Hub { inner })
    }

    /// Number of local subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The hub's counters and lag histogram.
    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// Number of Redis pattern subscriptions held.
    pub fn redis_pattern_count(&self) -> usize {
        self.inner.globs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Subscribes. `output_buffer` adds to the hub's per-subscriber buffer: a subscriber
    /// that falls further behind is cut off with its resume offset.
    ///
    /// A live-only subscription gets events straight from the hub's Redis connection task
    /// (one hand-off per event); one that replays history first goes through a forwarding
    /// task, which orders replay before live and drops what it already sent.
    pub fn subscribe(
        &self,
        patterns: Vec<Pattern>,
        start: Start,
        output_buffer: usize,
    ) -> Result<Subscription, BusError> {
        if patterns.is_empty() {
            return Err(BusError::Invalid("at least one pattern is required".into()));
        }
        let resume_topic = match (&start, patterns.as_slice()) {
            (Start::Live, _) => None,
            (_, [single]) if single.is_concrete() => Some(single.as_topic()),
            _ => {
                return Err(BusError::Invalid(
                    "from_offset / from_beginning need exactly one concrete topic (no wildcards)".into(),
                ));
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let globs: Vec<String> =
            patterns.iter().map(|p| p.redis_glob(&self.inner.bus.channel_prefix())).collect();
        let guard = SubGuard { hub: self.clone(), id, globs: globs.clone() };
        if resume_topic.is_none() {
            let (tx, rx) = mpsc::channel(self.inner.buffer + output_buffer.max(1));
            self.register(id, LocalSub { patterns, tx, kind: SubKind::Direct { last: None } }, &globs);
            return Ok(Subscription { rx, _guard: Some(guard) });
        }
        let (live_tx, live_rx) = mpsc::channel(self.inner.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let kind = SubKind::Forwarded { lagged: lagged.clone() };
        self.register(id, LocalSub { patterns, tx: live_tx, kind }, &globs);
        let (out_tx, out_rx) = mpsc::channel(output_buffer.max(1));
        let reconnects = self.inner.reconnects.subscribe();
        tokio::spawn(forward(
            self.inner.bus.clone(),
            guard,
            start,
            resume_topic,
            live_rx,
            lagged,
            out_tx,
            reconnects,
        ));
        Ok(Subscription { rx: out_rx, _guard: None })
    }

    /// Waits until Redis has confirmed the pattern subscriptions behind `patterns` (at most
    /// `limit`): from then on every event published on them reaches this hub. The Events
    /// service answers a Subscribe only then, so a client that subscribes and then starts
    /// a run sees all of its events. False when `limit` passed first (Redis away: the
    /// subscription goes live when it reconnects).
    pub async fn wait_subscribed(&self, patterns: &[Pattern], limit: Duration) -> bool {
        let prefix = self.inner.bus.channel_prefix();
        let globs: Vec<String> = patterns.iter().map(|p| p.redis_glob(&prefix)).collect();
        wait_confirmed(&self.inner, &globs, limit).await
    }

    fn register(&self, id: u64, sub: LocalSub, globs: &[String]) {
        self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).insert(id, sub);
        self.acquire(globs);
    }

    fn acquire(&self, globs: &[String]) {
        let mut map = self.inner.globs.lock().unwrap_or_else(|p| p.into_inner());
        for glob in globs {
            let count = map.entry(glob.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                // Not confirmed until this PSUBSCRIBE is answered, even if an unsubscribe
                // of the same glob is still queued.
                self.inner.confirmed.send_modify(|set| {
                    set.remove(glob);
                });
                let _ = self.inner.commands.send(Command::Subscribe(glob.clone()));
            }
        }
    }

    fn release(&self, id: u64, globs: &[String]) {
        self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let mut map = self.inner.globs.lock().unwrap_or_else(|p| p.into_inner());
        for glob in globs {
            if let Some(count) = map.get_mut(glob) {
                *count -= 1;
                if *count == 0 {
                    map.remove(glob);
                    self.inner.confirmed.send_modify(|set| {
                        set.remove(glob);
                    });
                    let _ = self.inner.commands.send(Command::Unsubscribe(glob.clone()));
                }
            }
        }
    }
}

/// Unregisters a subscriber when its forwarding task ends, however it ends.
struct SubGuard {
    hub: Hub,
    id: u64,
    globs: Vec<String>,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.hub.release(self.id, &self.globs);
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    bus: Bus,
    guard: SubGuard,
    start: Start,
    resume_topic: Option<String>,
    mut live: mpsc::Receiver<Result<EventRecord, BusError>>,
    lagged: Arc<AtomicBool>,
    out: mpsc::Sender<Result<EventRecord, BusError>>,
    mut reconnects: watch::Receiver<u64>,
) {
    // Last offset delivered per topic: the resume position, and the duplicate filter.
    let mut last: Option<Offset> = match &start {
        Start::After(offset) => Some(offset.clone()),
        _ => None,
    };
    let mut last_any = String::new();
    // History is read once the live subscription is in place, so that an event published
    // meanwhile is either in the history read or arrives live (and is deduplicated).
    if resume_topic.is_some() {
        wait_confirmed(&guard.hub.inner, &guard.globs, SUBSCRIBE_WAIT).await;
    }
    if let Some(topic) = &resume_topic
        && !replay(&bus, topic, &mut last, &out).await
    {
        return;
    }
    loop {
        tokio::select! {
            event = live.recv() => {
                // Only events arrive here (the hub reports lag through `lagged`).
                let Some(Ok(event)) = event else {
                    if lagged.load(Ordering::Relaxed) {
                        let resume_from = last.as_ref().map(ToString::to_string).unwrap_or(last_any.clone());
                        let _ = out.send(Err(BusError::Lagged { resume_from })).await;
                    }
                    return;
                };
                if resume_topic.is_some() {
                    if let Some(prev) = &last {
                        if prev.epoch == event.offset.epoch && event.offset.n <= prev.n {
                            continue;
                        }
                        if prev.epoch != event.offset.epoch {
                            let _ = out.send(Err(BusError::EpochChanged {
                                topic: event.topic.clone(),
                                requested: prev.epoch.clone(),
                                current: event.offset.epoch.clone(),
                            })).await;
                            return;
                        }
                    }
                    last = Some(event.offset.clone());
                }
                last_any = event.offset.to_string();
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Some(topic) = &resume_topic
                    && !replay(&bus, topic, &mut last, &out).await
                {
                    return;
                }
            }
            _ = out.closed() => return,
        }
    }
}

/// Sends everything of `topic` after `last` from history; false when the subscription must
/// end (error sent, or client gone).
async fn replay(
    bus: &Bus,
    topic: &str,
    last: &mut Option<Offset>,
    out: &mpsc::Sender<Result<EventRecord, BusError>>,
) -> bool {
    loop {
        match bus.history(topic, last.as_ref(), 500).await {
            Ok((events, more)) => {
                for event in events {
                    *last = Some(event.offset.clone());
                    if out.send(Ok(event)).await.is_err() {
                        return false;
                    }
                }
                if !more {
                    return true;
                }
            }
            Err(BusError::Redis(err)) if aura_common::redis::is_unavailable(&err) => {
                // Redis is away: the reconnect notification will trigger another replay.
                return true;
            }
            Err(err) => {
                let _ = out.send(Err(err)).await;
                return false;
            }
        }
    }
}

/// How long a subscription waits for Redis to confirm its patterns before it reads history
/// or answers anyway (a reconnect replays what was missed).
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

async fn wait_confirmed(inner: &Inner, globs: &[String], limit: Duration) -> bool {
    let mut confirmed = inner.confirmed.subscribe();
    let all = move |set: &HashSet<String>| globs.iter().all(|g| set.contains(g));
    tokio::time::timeout(limit, confirmed.wait_for(all)).await.is_ok_and(|r| r.is_ok())
}

async fn run_connection(
    inner: Arc<Inner>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = async {
            let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
            let globs: Vec<String> =
                inner.globs.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
            inner.confirmed.send_modify(HashSet::clear);
            for glob in globs {
                sink.psubscribe(&glob).await?;
                inner.confirmed.send_modify(|set| {
                    set.insert(glob);
                });
            }
            inner.reconnects.send_modify(|n| *n += 1);
            if *inner.reconnects.borrow() > 1 {
                inner.metrics.reconnects.inc();
            }
            loop {
                tokio::select! {
                    cmd = commands.recv() => match cmd {
                        Some(Command::Subscribe(glob)) => {
                            sink.psubscribe(&glob).await?;
                            inner.confirmed.send_modify(|set| {
                                set.insert(glob);
                            });
                        }
                        Some(Command::Unsubscribe(glob)) => {
                            inner.confirmed.send_modify(|set| {
                                set.remove(&glob);
                            });
                            sink.punsubscribe(glob).await?;
                        }
                        None => return Ok(()),
                    },
                    msg = stream.next() => match msg {
                        Some(msg) => dispatch(&inner, msg),
                        None => return Ok::<_, redis::RedisError>(()),
                    },
                }
            }
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => result,
        };
        inner.confirmed.send_modify(HashSet::clear);
        match result {
            Ok(()) => tracing::warn!("event subscription connection closed; reconnecting"),
            Err(err) => tracing::warn!(%err, "event subscription connection failed; reconnecting"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One live message holds one or more events of its topic, in offset order (a body: see
/// [`crate::parse_body`]).
fn dispatch(inner: &Inner, msg: redis::Msg) {
    let prefix = inner.bus.channel_prefix();
    let channel = msg.get_channel_name();
    let Some(topic) = channel.strip_prefix(prefix.as_str()) else { return };
    let Ok(body) = msg.get_payload::<String>() else { return };
    let Some(events) = crate::parse_body(topic, &body) else {
        tracing::warn!(topic, "an unreadable event message was skipped");
        return;
    };
    for event in events {
        dispatch_event(inner, topic, event);
    }
}

fn dispatch_event(inner: &Inner, topic: &str, event: EventRecord) {
    let time_ms = event.time_ms;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    inner.metrics.lag.observe(now_ms.saturating_sub(time_ms) as f64 / 1000.0);
    let mut subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
    let mut cut_off = Vec::new();
    for (id, sub) in subs.iter_mut() {
        if !sub.patterns.iter().any(|p| p.matches(topic)) {
            continue;
        }
        match sub.tx.try_send(Ok(event.clone())) {
            Ok(()) => {
                inner.metrics.delivered.inc();
                if let SubKind::Direct { last } = &mut sub.kind {
                    *last = Some(event.offset.clone());
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A slow subscriber never slows the others: it is cut off and told to resume.
                inner.metrics.cut_off.inc();
                cut_off.push(*id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    for id in cut_off {
        let Some(sub) = subs.remove(&id) else { continue };
        match sub.kind {
            SubKind::Direct { last } => {
                // Its channel is full: the error goes in once the subscriber has taken what
                // is buffered.
                let resume_from = last.as_ref().map(ToString::to_string).unwrap_or_default();
                tokio::spawn(async move {
                    let _ = sub.tx.send(Err(BusError::Lagged { resume_from })).await;
                });
            }
            // Dropping the sender ends its live channel; its forwarding task reports the lag.
            SubKind::Forwarded { lagged } => lagged.store(true, Ordering::Relaxed),
        }
        // The glob refcounts are released by the subscription's guard.
    }
}
