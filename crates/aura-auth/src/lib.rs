//! API keys.
//!
//! A key is shown once, when created; Redis keeps only its SHA-256, so a leaked Redis dump
//! does not leak credentials. Each key belongs to a tenant. Keys can also come from a
//! file of `tenant:key` lines (a Kubernetes Secret), which are hashed in memory.
//!
//! Layout: `<prefix>:{auth}:keys` hash `sha256(key)` → JSON [`KeyRecord`], and
//! `<prefix>:{auth}:ids` hash key id → `sha256(key)` (for listing and revoking by id).
#![forbid(unsafe_code)]

use std::collections::HashMap;

use aura_common::redis::RedisConn;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Bad input (tenant name, key file line).
    #[error("{0}")]
    Invalid(String),
    /// No such key id.
    #[error("no API key with id {0:?}")]
    NotFound(String),
}

/// What is stored about a key (never the key itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, for listing and revoking.
    pub id: String,
    /// The tenant the key acts for.
    pub tenant: String,
    /// A label.
    pub name: String,
    /// Creation time, ms.
    pub created_at_ms: u64,
    /// Revoked keys are refused.
    pub revoked: bool,
}

/// SHA-256 of a key, hex.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Tenants: 1-64 characters of `[a-z0-9_-]`.
pub fn validate_tenant(tenant: &str) -> Result<(), AuthError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!("tenant {tenant:?} must be 1-64 characters of [a-z0-9_-]")))
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// Keys in Redis.
#[derive(Clone)]
pub struct KeyStore {
    conn: RedisConn,
    keys: String,
    ids: String,
}

impl KeyStore {
    /// A store under `prefix`.
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        KeyStore { conn, keys: format!("{prefix}:{{auth}}:keys"), ids: format!("{prefix}:{{auth}}:ids") }
    }

    /// Creates a key for `tenant`; returns the key (shown once) and its record.
    pub async fn create(&self, tenant: &str, name: &str) -> Result<(String, KeyRecord), AuthError> {
        validate_tenant(tenant)?;
        let key = format!("aura_{}", random_token(40));
        let record = KeyRecord {
            id: format!("key_{}", random_token(10)),
            tenant: tenant.to_string(),
            name: name.to_string(),
            created_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            revoked: false,
        };
        self.put(&key, &record).await?;
        Ok((key, record))
    }

    /// Stores a known key (e.g. `aura up --dev-api-key`); idempotent.
    pub async fn put(&self, key: &str, record: &KeyRecord) -> Result<(), AuthError> {
        let hash = hash_key(key);
        let json = serde_json::to_string(record).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic().hset(&self.keys, &hash, json).ignore().hset(&self.ids, &record.id, &hash).ignore();
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// The record of a presented key, if it exists.
    pub async fn lookup(&self, key: &str) -> Result<Option<KeyRecord>, AuthError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.hget(&self.keys, hash_key(key)).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Every key's record, by id.
    pub async fn list(&self) -> Result<Vec<KeyRecord>, AuthError> {
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = conn.hgetall(&self.keys).await?;
        let mut out: Vec<KeyRecord> = all.values().filter_map(|j| serde_json::from_str(j).ok()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Revokes a key by id (it stays listed, marked revoked).
    pub async fn revoke(&self, id: &str) -> Result<KeyRecord, AuthError> {
        let mut conn = self.conn.clone();
        let hash: Option<String> = conn.hget(&self.ids, id).await?;
        let hash = hash.ok_or_else(|| AuthError::NotFound(id.to_string()))?;
        let json: Option<String> = conn.hget(&self.keys, &hash).await?;
        let mut record: KeyRecord = json
            .and_then(|j| serde_json::from_str(&j).ok())
            .ok_or_else(|| AuthError::NotFound(id.to_string()))?;
        record.revoked = true;
        let json = serde_json::to_string(&record).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let () = conn.hset(&self.keys, &hash, json).await?;
        Ok(record)
    }
}

/// Parses a key file: one `tenant:key` per line; blank lines and `#` comments ignored.
/// Returns key hash → tenant.
pub fn parse_key_file(text: &str) -> Result<HashMap<String, String>, AuthError> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tenant, key) = line
            .split_once(':')
            .ok_or_else(|| AuthError::Invalid(format!("line {}: expected tenant:key", n + 1)))?;
        validate_tenant(tenant.trim()).map_err(|e| AuthError::Invalid(format!("line {}: {e}", n + 1)))?;
        if key.trim().len() < 16 {
            return Err(AuthError::Invalid(format!("line {}: keys must be at least 16 characters", n + 1)));
        }
        out.insert(hash_key(key.trim()), tenant.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_reject_bad_lines() {
        let keys =
            parse_key_file("# comment\nacme:0123456789abcdef0123\n\nglobex: fedcba9876543210fedc\n").unwrap();
        assert_eq!(keys.get(&hash_key("0123456789abcdef0123")).map(String::as_str), Some("acme"));
        assert_eq!(keys.len(), 2);
        assert!(parse_key_file("no-colon").is_err());
        assert!(parse_key_file("acme:short").is_err());
        assert!(parse_key_file("Bad Tenant:0123456789abcdef0123").is_err());
    }

    #[tokio::test]
    async fn keys_are_stored_hashed_and_can_be_revoked() {
        let redis = aura_testkit::RedisServer::start();
        let store = KeyStore::new(aura_common::redis::connect(&redis.url()).await.unwrap(), "aura");
        let (key, record) = store.create("acme", "ci").await.unwrap();
        assert!(key.starts_with("aura_"));
        let found = store.lookup(&key).await.unwrap().unwrap();
        assert_eq!((found.tenant.as_str(), found.revoked), ("acme", false));
        let mut conn = redis.client();
        let dump: Vec<String> = redis::cmd("HGETALL").arg("aura:{auth}:keys").query(&mut conn).unwrap();
        assert!(dump.iter().all(|v| !v.contains(&key)), "the key itself is never stored");
        store.revoke(&record.id).await.unwrap();
        assert!(store.lookup(&key).await.unwrap().unwrap().revoked);
        assert!(matches!(store.revoke("key_nope").await, Err(AuthError::NotFound(_))));
        assert_eq!(store.list().await.unwrap().len(), 1);
    }
}
