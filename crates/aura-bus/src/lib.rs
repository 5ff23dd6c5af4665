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

    /// Publishes many events. A topic's events always share one script call; on one Redis
    /// node topics are packed into calls of about 500 events, on a cluster each topic is
    /// its own call (its own slot). Calls are sent concurrently, so the multiplexed
    /// connection pipelines them. Offsets come back in the order given.
    pub async fn publish_batch(&self, events: &[(String, String, Json)]) -> Result<Vec<Offset>, BusError> {
        for (topic, event_type, payload) in events {
            validate_topic(topic)?;
            if event_type.is_empty() || event_type.len() > 128 {
                return Err(BusError::Invalid("event type must be 1-128 characters".into()));
            }
            // They delimit the lines of a stored or live body.
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
        // Each call carries whole topics (so, on a cluster, one slot: one topic per call).
        let groups = by_topic(events);
        let calls: Vec<Vec<(&str, Vec<usize>)>> = match &self.conn {
            RedisConn::Single(_) => {
                let mut calls: Vec<Vec<(&str, Vec<usize>)>> = vec![Vec::new()];
                let mut size = 0;
                for group in groups {
                    if size > 0 && size + group.1.len() > 500 {
                        calls.push(Vec::new());
                        size = 0;
                    }
                    size += group.1.len();
                    calls.last_mut().expect("never empty").push(group);
                }
                calls
            }
            RedisConn::Cluster(_) => groups.into_iter().map(|group| vec![group]).collect(),
        };
        let replies =
            futures::future::try_join_all(calls.iter().map(|call| self.publish_call(events, call))).await?;
        let mut offsets: Vec<Option<Offset>> = vec![None; events.len()];
        for (call, firsts) in calls.iter().zip(replies) {
            for ((_, ix), (epoch, first)) in call.iter().zip(firsts) {
                for (k, &i) in ix.iter().enumerate() {
                    offsets[i] = Some(Offset { epoch: epoch.clone(), n: first + k as u64 });
                }
            }
        }
        offsets
            .into_iter()
            .map(|o| o.ok_or_else(|| BusError::Protocol("an event got no offset".into())))
            .collect()
    }

    /// One script call for some topics' events (indexes into `events`); per topic, its
    /// epoch and the number its first event got.
    async fn publish_call(
        &self,
        events: &[(String, String, Json)],
        topics: &[(&str, Vec<usize>)],
    ) -> Result<Vec<(String, u64)>, BusError> {
        let mut inv = PUBLISH.prepare_invoke();
        for (topic, _) in topics {
            inv.key(self.stream_key(topic));
        }
        inv.arg(self.channel_prefix())
            .arg(self.retention.max_len.max(1))
            .arg(self.retention.max_age.as_millis() as u64)
            .arg(fresh_epoch());
        for (topic, ix) in topics {
            let lines: Vec<String> = ix
                .iter()
                .map(|&i| {
                    let (_, event_type, payload) = &events[i];
                    format!("{event_type}|{payload}")
                })
                .collect();
            inv.arg(topic).arg(ix.len()).arg(lines.join("\n"));
        }
        let mut conn = self.conn.clone();
        // Flat: epoch, first number per topic (publish.lua).
        let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
        if reply.len() != topics.len() * 2 {
            return Err(BusError::Protocol(format!("{} values for {} topics", reply.len(), topics.len())));
        }
        reply
            .chunks_exact(2)
            .map(|pair| {
                let epoch = redis::FromRedisValue::from_redis_value(pair[0].clone())
                    .map_err(redis::RedisError::from)?;
                let first = redis::FromRedisValue::from_redis_value(pair[1].clone())
                    .map_err(redis::RedisError::from)?;
                Ok((epoch, first))
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
        let Some(after) = after else {
            // From the oldest retained event, whose number the first entry tells.
            let mut pipe = redis::pipe();
            pipe.get(format!("{key}:epoch"));
            pipe.cmd("XRANGE").arg(&key).arg("-").arg("+").arg("COUNT").arg(1);
            let (epoch, range): (Option<String>, StreamRangeReply) = pipe.query_async(&mut conn).await?;
            let epoch = epoch.unwrap_or_default();
            let mut events = match range.ids.first() {
                Some(entry) => entry_records(topic, &epoch, entry)?,
                None => return Ok((Vec::new(), false)),
            };
            let last = events.last().map_or(0, |e| e.offset.n);
            if events.len() <= limit {
                let (now, rest) = read_after(&mut conn, &key, topic, last, limit - events.len()).await?;
                if now != epoch {
                    // A new history began between the two reads: the caller's next page,
                    // from these events' offsets, reports it (EpochChanged).
                    return Ok((events, true));
                }
                events.extend(rest);
            }
            let more = events.len() > limit;
            events.truncate(limit);
            return Ok((events, more));
        };
        let (epoch, mut events) = read_after(&mut conn, &key, topic, after.n, limit).await?;
        if epoch != after.epoch {
            return Err(BusError::EpochChanged {
                topic: topic.to_string(),
                requested: after.epoch.clone(),
                current: epoch,
            });
        }
        // Numbers are contiguous and trimming removes the oldest entries: when the first
        // entry after the offset starts past the next number, events the client never saw
        // were trimmed (and that entry is the oldest retained).
        if let Some(first) = events.first().map(|e| e.offset.n)
            && first > after.n + 1
        {
            return Err(BusError::OutOfRange {
                requested: after.to_string(),
                oldest: Offset { epoch, n: first }.to_string(),
            });
        }
        events.retain(|e| e.offset.n > after.n);
        let more = events.len() > limit;
        events.truncate(limit);
        Ok((events, more))
    }
}

/// The topic's epoch and the events of the stream entries that hold numbers n + 1 ..=
/// n + want + 1 (one more than wanted, to tell whether more follow), in one round trip.
/// An entry holds one or more events and is keyed by its last number (publish.lua), so
/// these are the entries keyed within (n, n + want + 1], plus the first keyed after that,
/// which holds the rest when an entry spans the end. What is read stays about `want`
/// events however many an entry holds (a `workflows.<name>` entry holds hundreds).
async fn read_after(
    conn: &mut RedisConn,
    key: &str,
    topic: &str,
    n: u64,
    want: usize,
) -> Result<(String, Vec<EventRecord>), BusError> {
    let end = n + want as u64 + 1;
    let mut pipe = redis::pipe();
    pipe.get(format!("{key}:epoch"));
    pipe.cmd("XRANGE").arg(key).arg(format!("({n}-0")).arg(format!("{end}-0"));
    pipe.cmd("XRANGE").arg(key).arg(format!("({end}-0")).arg("+").arg("COUNT").arg(1);
    let (epoch, within, next): (Option<String>, StreamRangeReply, StreamRangeReply) =
        pipe.query_async(conn).await?;
    let epoch = epoch.unwrap_or_default();
    let mut events = Vec::new();
    for entry in within.ids.iter().chain(&next.ids) {
        events.extend(entry_records(topic, &epoch, entry)?);
    }
    Ok((epoch, events))
}

/// Indexes of `events` grouped by topic, topics in order of first appearance.
fn by_topic(events: &[(String, String, Json)]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (topic, _, _)) in events.iter().enumerate() {
        let g = *index.entry(topic.as_str()).or_insert_with(|| {
            groups.push((topic.as_str(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// The events of one stream entry: its field `r`, a body as in a live message. (Entries
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
    parse_body(topic, &body).ok_or_else(|| {
        bad(&format!("unreadable body starting {:?}", body.chars().take(80).collect::<String>()))
    })
}

/// Parses a body, the form of a topic's events in a live message and in a stored stream
/// entry alike (publish.lua): the line `epoch|first n|time_ms`, then one line
/// `type|payload` per event, numbered from the first. Bodies of older publishers, one line
/// `epoch|n|time_ms|type|payload` per event, are read too (a rolling upgrade has both).
pub(crate) fn parse_body(topic: &str, body: &str) -> Option<Vec<EventRecord>> {
    let event = |epoch: &str, n: u64, time_ms: u64, event_type: &str, payload: &str| EventRecord {
        topic: topic.to_string(),
        event_type: event_type.to_string(),
        payload: serde_json::from_str(payload).unwrap_or(Json::Null),
        time_ms,
        offset: Offset { epoch: epoch.to_string(), n },
    };
    let (head, lines) = body.split_once('\n').unwrap_or((body, ""));
    let mut parts = head.splitn(4, '|');
    let (epoch, n, time) = (parts.next()?, parts.next()?, parts.next()?);
    let (n, time_ms): (u64, u64) = (n.parse().ok()?, time.parse().ok()?);
    if let Some(rest) = parts.next() {
        // An older body: every line is a whole record.
        let (event_type, payload) = rest.split_once('|')?;
        let mut out = vec![event(epoch, n, time_ms, event_type, payload)];
        for line in lines.split('\n').filter(|l| !l.is_empty()) {
            let mut p = line.splitn(5, '|');
            let (e, n, t, ty, pl) = (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?);
            out.push(event(e, n.parse().ok()?, t.parse().ok()?, ty, pl));
        }
        return Some(out);
    }
    lines
        .split('\n')
        .enumerate()
        .map(|(i, line)| {
            let (event_type, payload) = line.split_once('|')?;
            Some(event(epoch, n + i as u64, time_ms, event_type, payload))
        })
        .collect()
}

fn fresh_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}
