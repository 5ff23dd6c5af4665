//! AURA's event bus on Redis.
//!
//! # Layout
//! - [`Bus`] — publish (one Lua script: stream append + pub/sub fan-out, atomically) and
//!   history reads.
//! - [`hub`] — subscriptions. One Redis pattern subscription per distinct pattern per process,
//!   shared by every local subscriber; bounded buffers cut slow subscribers off with a
//!   resume offset; resume from an offset replays history, then live, with no gap and no
//!   duplicate.
//! - [`topic`] — topics, patterns (`*` one segment, `>` the rest) and offsets
//!   (`<epoch>:<ms>-<seq>`).
#![forbid(unsafe_code)]

pub mod hub;
pub mod topic;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use aura_common::redis::RedisConn;
use redis::{AsyncCommands, Script, streams::StreamRangeReply};
use serde_json::Value as Json;

pub use topic::{Offset, Pattern, validate_topic};

static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Bad topic, pattern, offset or payload.
    #[error("{0}")]
    Invalid(String),
    /// The offset is older than the retained history.
    #[error("offset {requested} is older than the retained history; the oldest available is {oldest}")]
    OutOfRange {
        /// What was asked for.
        requested: String,
        /// Oldest retained offset ('' when the topic has no history).
        oldest: String,
    },
    /// Redis lost the topic's history since the offset was handed out.
    #[error(
        "the history of topic {topic} was lost (epoch {requested} is gone, now {current}); resume from the start"
    )]
    EpochChanged {
        /// Topic.
        topic: String,
        /// The offset's epoch.
        requested: String,
        /// The topic's epoch now.
        current: String,
    },
    /// The subscriber did not keep up; its buffer overflowed.
    #[error("subscriber lagged behind and was cut off; resume from offset {resume_from:?}")]
    Lagged {
        /// The last offset delivered to it ('' if none), per topic when known.
        resume_from: String,
    },
    /// A reply that this version does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    /// Topic.
    pub topic: String,
    /// Type, e.g. `run.started`.
    pub event_type: String,
    /// JSON object.
    pub payload: Json,
    /// Redis-clock ms.
    pub time_ms: u64,
    /// Position.
    pub offset: Offset,
}

/// Retention of each topic's history.
#[derive(Clone, Debug)]
pub struct Retention {
    /// At most about this many events per topic.
    pub max_len: u64,
    /// A topic nobody published to for this long expires with its history.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_len: 10_000, max_age: Duration::from_secs(24 * 3600) }
    }
}

/// Maps a topic to the stream key it lives under, when that is not the default
/// `<prefix>:ev:{<topic>}` (AURA's run topics live in their run's queue partition).
pub type TopicRouter = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Publishing and history. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    conn: RedisConn,
    prefix: String,
    retention: Retention,
    router: Option<TopicRouter>,
}

impl Bus {
    /// A bus on `conn` under key prefix `prefix` (e.g. `aura`).
    pub fn new(conn: RedisConn, prefix: &str, retention: Retention) -> Self {
        Bus { conn, prefix: prefix.to_string(), retention, router: None }
    }

    /// Routes some topics to other stream keys (see [`TopicRouter`]).
    pub fn with_router(mut self, router: TopicRouter) -> Self {
        self.router = Some(router);
        self
    }

    fn stream_key(&self, topic: &str) -> String {
        self.router
            .as_ref()
            .and_then(|route| route(topic))
            .unwrap_or_else(|| format!("{}:ev:{{{topic}}}", self.prefix))
    }

    /// The pub/sub channel prefix.
    pub fn channel_prefix(&self) -> String {
        format!("{}:evc:", self.prefix)
    }

    /// Publishes one event; returns its offset.
    pub async fn publish(&self, topic: &str, event_type: &str, payload: &Json) -> Result<Offset, BusError> {
        Ok(self
            .publish_batch(&[(topic.to_string(), event_type.to_string(), payload.clone())])
            .await?
            .remove(0))
    }

    /// Publishes many events. On one Redis node this is one script call; on a cluster,
    /// one call per event (each topic is its own slot), sent concurrently so the
    /// multiplexed connection pipelines them.
    pub async fn publish_batch(&self, events: &[(String, String, Json)]) -> Result<Vec<Offset>, BusError> {
        for (topic, event_type, payload) in events {
            validate_topic(topic)?;
            if event_type.is_empty() || event_type.len() > 128 {
                return Err(BusError::Invalid("event type must be 1-128 characters".into()));
            }
            // They delimit records of the live messages.
            if event_type.chars().any(|c| c == '|' || c.is_control()) {
                return Err(BusError::Invalid(
                    "event type must not contain '|' or control characters".into(),
                ));
            }
            if !payload.is_object() {
                return Err(BusError::Invalid("payload must be a JSON object".into()));
            }
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let chunks: Vec<&[(String, String, Json)]> = match &self.conn {
            RedisConn::Single(_) => events.chunks(500).collect(),
            RedisConn::Cluster(_) => events.chunks(1).collect(),
        };
        let calls = chunks.into_iter().map(|chunk| self.publish_chunk(chunk));
        let results = futures::future::try_join_all(calls).await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn publish_chunk(&self, chunk: &[(String, String, Json)]) -> Result<Vec<Offset>, BusError> {
        let mut inv = PUBLISH.prepare_invoke();
        for (topic, _, _) in chunk {
            inv.key(self.stream_key(topic));
        }
        inv.arg(self.channel_prefix())
            .arg(self.retention.max_len)
            .arg(self.retention.max_age.as_millis() as u64)
            .arg(fresh_epoch());
        for (topic, event_type, payload) in chunk {
            inv.arg(topic).arg(event_type).arg(payload.to_string());
        }
        let mut conn = self.conn.clone();
        // Flat: epoch, n per event (publish.lua).
        let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
        reply
            .chunks_exact(2)
            .map(|c| {
                Ok(Offset {
                    epoch: redis::FromRedisValue::from_redis_value(c[0].clone())
                        .map_err(redis::RedisError::from)?,
                    n: redis::FromRedisValue::from_redis_value(c[1].clone())
                        .map_err(redis::RedisError::from)?,
                })
            })
            .collect()
    }

    /// The topic's current epoch ('' when it has no history).
    pub async fn epoch(&self, topic: &str) -> Result<String, BusError> {
        let mut conn = self.conn.clone();
        let epoch: Option<String> = conn.get(format!("{}:epoch", self.stream_key(topic))).await?;
        Ok(epoch.unwrap_or_default())
    }

    /// Up to `limit` events of `topic` after `after` (from the oldest retained when `None`),
    /// and whether more follow. Fails with `OutOfRange` when events after `after` were
    /// trimmed, and `EpochChanged` when Redis lost the history `after` came from.
    pub async fn history(
        &self,
        topic: &str,
        after: Option<&Offset>,
        limit: usize,
    ) -> Result<(Vec<EventRecord>, bool), BusError> {
        validate_topic(topic)?;
        let key = self.stream_key(topic);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.get(format!("{key}:epoch"));
        pipe.cmd("XRANGE").arg(&key).arg("-").arg("+").arg("COUNT").arg(1);
        // An entry holds a batch of events and is keyed by its last number (publish.lua):
        // the entries after "<n>-0" are those holding events after n.
        let start = after.map_or_else(|| "-".to_string(), |o| format!("({}", o.stream_id()));
        // Each entry holds at least one wanted event, so limit + 1 entries answer `more`.
        pipe.cmd("XRANGE").arg(&key).arg(start).arg("+").arg("COUNT").arg(limit + 1);
        let (epoch, oldest, range): (Option<String>, StreamRangeReply, StreamRangeReply) =
            pipe.query_async(&mut conn).await?;
        let epoch = epoch.unwrap_or_default();
        if let Some(after) = after {
            if epoch != after.epoch {
                return Err(BusError::EpochChanged {
                    topic: topic.to_string(),
                    requested: after.epoch.clone(),
                    current: epoch,
                });
            }
            // Numbers are contiguous: a gap between the offset and the oldest retained
            // event means events the client never saw were trimmed.
            if let Some(entry) = oldest.ids.first() {
                let first = entry_records(topic, &epoch, entry)?
                    .first()
                    .map(|e| e.offset.n)
                    .ok_or_else(|| BusError::Protocol(format!("empty stream entry {}", entry.id)))?;
                if first > after.n + 1 {
                    return Err(BusError::OutOfRange {
                        requested: after.to_string(),
                        oldest: Offset { epoch: epoch.clone(), n: first }.to_string(),
                    });
                }
            }
        }
        let after_n = after.map_or(0, |o| o.n);
        let mut events = Vec::new();
        for entry in &range.ids {
            events.extend(entry_records(topic, &epoch, entry)?.into_iter().filter(|e| e.offset.n > after_n));
        }
        let more = events.len() > limit;
        events.truncate(limit);
        Ok((events, more))
    }
}

/// The events of one stream entry: its field `r`, records as in a live message. (Entries
/// written before events were batched hold one event as fields t, p, ts, numbered by the
/// id; they are read too, so history written by an older version stays readable.)
fn entry_records(
    topic: &str,
    epoch: &str,
    entry: &redis::streams::StreamId,
) -> Result<Vec<EventRecord>, BusError> {
    let bad = |what: &str| BusError::Protocol(format!("stream entry {}: {what}", entry.id));
    let Some(body) = entry.get::<String>("r") else {
        let n = entry.id.split('-').next().and_then(|n| n.parse().ok()).ok_or_else(|| bad("id"))?;
        let payload: String = entry.get("p").ok_or_else(|| bad("no field r or p"))?;
        return Ok(vec![EventRecord {
            topic: topic.to_string(),
            event_type: entry.get("t").unwrap_or_default(),
            payload: serde_json::from_str(&payload).unwrap_or(Json::Null),
            time_ms: entry.get("ts").unwrap_or_default(),
            offset: Offset { epoch: epoch.to_string(), n },
        }]);
    };
    body.split('\n').map(|record| parse_record(topic, record).ok_or_else(|| bad(record))).collect()
}

/// Parses one record, `epoch|n|time_ms|type|payload`: the form of events in live messages
/// and in stored stream entries alike (publish.lua).
pub(crate) fn parse_record(topic: &str, record: &str) -> Option<EventRecord> {
    let mut parts = record.splitn(5, '|');
    let (epoch, n, time, event_type, payload) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(EventRecord {
        topic: topic.to_string(),
        event_type: event_type.to_string(),
        payload: serde_json::from_str(payload).unwrap_or(Json::Null),
        time_ms: time.parse().ok()?,
        offset: Offset { epoch: epoch.to_string(), n: n.parse().ok()? },
    })
}

fn fresh_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}
