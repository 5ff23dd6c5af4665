//! Redis connections that survive a Redis restart.
//!
//! Every service holds one [`RedisConn`] (cheap to clone; all clones multiplex one socket
//! per node). A URL that lists several nodes separated by commas is treated as a Redis
//! Cluster. Requests made while Redis is away fail fast with a connection error (the
//! services answer UNAVAILABLE) while the connection re-establishes itself with
//! exponential backoff in the background.

use std::time::Duration;

use redis::{
    Client, Cmd, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

pub use redis::{RedisError, Script};

/// A connection to a single Redis node or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// One node, through redis-rs's reconnecting manager.
    Single(ConnectionManager),
    /// A Redis Cluster; redis-rs routes each command by its key's slot.
    Cluster(ClusterConnection),
}

/// How a URL is interpreted: see the module docs.
pub fn is_cluster_url(url: &str) -> bool {
    url.contains(',')
}

/// Connects lazily: the services start (reporting NOT_SERVING) even while Redis is down,
/// and become SERVING as soon as it answers.
pub async fn connect(url: &str) -> RedisResult<RedisConn> {
    if is_cluster_url(url) {
        let nodes: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let client = ClusterClientBuilder::new(nodes)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(10))
            .build()?;
        Ok(RedisConn::Cluster(client.get_async_connection().await?))
    } else {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(8)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(client, config)?))
    }
}

/// Opens a dedicated (not shared) connection to a single node, for pub/sub.
pub fn client(url: &str) -> RedisResult<Client> {
    let first = url.split(',').next().unwrap_or(url).trim();
    Client::open(first)
}

impl RedisConn {
    /// True when Redis answers a PING within a second.
    pub async fn is_healthy(&self) -> bool {
        let mut conn = self.clone();
        let ping = redis::cmd("PING");
        let reply = tokio::time::timeout(Duration::from_secs(1), ping.query_async::<String>(&mut conn));
        matches!(reply.await, Ok(Ok(_)))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// True for errors that mean "Redis is not reachable right now" (as opposed to a bug or a
/// script error): these map to UNAVAILABLE.
pub fn is_unavailable(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_cluster_error()
        || matches!(err.kind(), redis::ErrorKind::Io)
}
