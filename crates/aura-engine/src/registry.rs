//! Versioned workflow registration. Versions are immutable, so a resolved version is cached
//! in-process forever. "Latest version of X" is cached until a registration anywhere
//! publishes `<wake prefix>def:<name>`: every replica's pub/sub subscription (the queue's
//! waker) sees it within milliseconds, so `StartRun` by name costs no Redis read yet a new
//! version is used at once. A lost subscription invalidates everything (messages may have
//! been missed), and entries expire after a minute as a last resort.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use aura_common::redis::RedisConn;
use redis::{AsyncCommands, Script};

use crate::{EngineError, spec::WorkflowSpec};

static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/register.lua")));

/// How long "latest version of X" is trusted at most, should an invalidation be lost.
const LATEST_TTL: Duration = Duration::from_secs(60);

/// Definition cache counters (exported by the Scheduler as Prometheus series).
#[derive(Clone, Debug, Default)]
pub struct CacheStats {
    /// Lookups of "latest" answered from memory.
    pub hits: prometheus_client::metrics::counter::Counter,
    /// Lookups that read Redis.
    pub misses: prometheus_client::metrics::counter::Counter,
}

/// A registered workflow version.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    /// The spec.
    pub spec: WorkflowSpec,
    /// Version, from 1.
    pub version: u32,
    /// Registration time, ms.
    pub created_at_ms: u64,
}

/// The registry.
pub struct Registry {
    conn: RedisConn,
    prefix: String,
    versions: Mutex<HashMap<(String, u32), Arc<Workflow>>>,
    /// name → (latest version, waker generation when read, read at).
    latest: Mutex<HashMap<String, (u32, u64, Instant)>>,
    waker: Arc<aura_queue::wake::Waker>,
    wake_prefix: String,
    stats: CacheStats,
}

impl Registry {
    pub(crate) fn new(
        conn: RedisConn,
        prefix: &str,
        waker: Arc<aura_queue::wake::Waker>,
        wake_prefix: String,
    ) -> Self {
        Registry {
            conn,
            prefix: prefix.to_string(),
            versions: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            waker,
            wake_prefix,
            stats: CacheStats::default(),
        }
    }

    /// Cache counters.
    pub fn cache_stats(&self) -> &CacheStats {
        &self.stats
    }

    fn lane(name: &str) -> String {
        format!("def:{name}")
    }

    fn def_key(&self, name: &str) -> String {
        format!("{}:{{wf}}:def:{name}", self.prefix)
    }

    /// Registers `spec` (already validated). Returns the version and whether it is new.
    pub async fn register(&self, spec: &WorkflowSpec) -> Result<(Workflow, bool), EngineError> {
        // serde_json maps are sorted by key, so equal specs serialise identically.
        let json = serde_json::to_string(spec).map_err(|e| EngineError::Corrupt(e.to_string()))?;
        let digest = sha1_smol::Sha1::from(json.as_bytes()).digest().to_string();
        let mut conn = self.conn.clone();
        let (created, version, ts): (i64, u32, u64) = REGISTER
            .key(self.def_key(&spec.name))
            .key(format!("{}:{{wf}}:hash:{}", self.prefix, spec.name))
            .key(format!("{}:{{wf}}:names", self.prefix))
            .arg(&spec.name)
            .arg(&json)
            .arg(digest)
            .invoke_async(&mut conn)
            .await?;
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).remove(&spec.name);
        if created == 1 {
            // Every replica drops its cached "latest" for this name.
            let _: i64 =
                conn.publish(format!("{}{}", self.wake_prefix, Self::lane(&spec.name)), version).await?;
        }
        Ok((Workflow { spec: spec.clone(), version, created_at_ms: ts }, created == 1))
    }

    /// A workflow version (0 = latest). NotFound names what is missing.
    pub async fn get(&self, name: &str, version: u32) -> Result<Arc<Workflow>, EngineError> {
        let version = if version == 0 { self.latest_version(name).await? } else { version };
        if let Some(wf) =
            self.versions.lock().unwrap_or_else(|p| p.into_inner()).get(&(name.to_string(), version))
        {
            return Ok(wf.clone());
        }
        let mut conn = self.conn.clone();
        let (json, ts): (Option<String>, Option<u64>) =
            conn.hmget(self.def_key(name), &[version.to_string(), format!("{version}:ts")]).await?;
        let Some(json) = json else {
            return Err(EngineError::NotFound(format!("workflow {name:?} has no version {version}")));
        };
        let spec: WorkflowSpec =
            serde_json::from_str(&json).map_err(|e| EngineError::Corrupt(e.to_string()))?;
        let wf = Arc::new(Workflow { spec, version, created_at_ms: ts.unwrap_or(0) });
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.to_string(), version), wf.clone());
        Ok(wf)
    }

    async fn latest_version(&self, name: &str) -> Result<u32, EngineError> {
        // Read the generation before Redis: a registration landing in between leaves the
        // entry stamped with the older generation, so the next lookup reads again.
        let generation = self.waker.generation(&Self::lane(name));
        if let Some((v, g, at)) = self.latest.lock().unwrap_or_else(|p| p.into_inner()).get(name)
            && *g == generation
            && at.elapsed() < LATEST_TTL
        {
            self.stats.hits.inc();
            return Ok(*v);
        }
        self.stats.misses.inc();
        let mut conn = self.conn.clone();
        let latest: Option<u32> = conn.hget(self.def_key(name), "latest").await?;
        let latest =
            latest.ok_or_else(|| EngineError::NotFound(format!("workflow {name:?} is not registered")))?;
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (latest, generation, Instant::now()));
        Ok(latest)
    }

    /// Latest version of each workflow, by name, after `after` (exclusive); `limit` items
    /// and whether more follow.
    pub async fn list(&self, after: &str, limit: usize) -> Result<(Vec<Arc<Workflow>>, bool), EngineError> {
        let mut conn = self.conn.clone();
        let min = if after.is_empty() { "-".to_string() } else { format!("({after}") };
        let names: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(format!("{}:{{wf}}:names", self.prefix))
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut conn)
            .await?;
        let more = names.len() > limit;
        let mut out = Vec::new();
        for name in names.into_iter().take(limit) {
            out.push(self.get(&name, 0).await?);
        }
        Ok((out, more))
    }
}
