//! Versioned workflow registration. Versions are immutable, so a resolved version is cached
//! in-process forever; "latest" is cached for a second (how fast a new version reaches
//! every replica).

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use aura_common::redis::RedisConn;
use redis::{AsyncCommands, Script};

use crate::{EngineError, spec::WorkflowSpec};

static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/register.lua")));

/// How long "latest version of X" is trusted from the cache.
const LATEST_TTL: Duration = Duration::from_secs(1);

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
    latest: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Registry {
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> Self {
        Registry {
            conn,
            prefix: prefix.to_string(),
            versions: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
        }
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
        if let Some((v, at)) = self.latest.lock().unwrap_or_else(|p| p.into_inner()).get(name)
            && at.elapsed() < LATEST_TTL
        {
            return Ok(*v);
        }
        let mut conn = self.conn.clone();
        let latest: Option<u32> = conn.hget(self.def_key(name), "latest").await?;
        let latest =
            latest.ok_or_else(|| EngineError::NotFound(format!("workflow {name:?} is not registered")))?;
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (latest, Instant::now()));
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
