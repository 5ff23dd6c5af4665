//! `llm`: an OpenAI-compatible chat-completions call. Responses are cached in Redis under
//! a hash of model, messages and parameters with a TTL; a hit never calls the model.
//! Config keys: `base_url` (default https://api.openai.com/v1), `model`, `messages`,
//! `temperature`, `max_tokens`, `api_key_env` (name of an environment variable holding the
//! key), `cache_ttl_seconds` (default 3600; 0 disables the cache).

use std::sync::atomic::{AtomicU64, Ordering};

use redis::AsyncCommands;
use serde_json::{Value as Json, json};

use crate::{Executor, StepError, StepInput, http, template};

/// At most this much of an answer body goes into an error message.
const EXCERPT_CHARS: usize = 300;

fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() { format!("{head}…") } else { head }
}

/// Cache counters of this process.
#[derive(Debug, Default)]
pub struct LlmStats {
    /// Answers served from the cache.
    pub hits: AtomicU64,
    /// Answers that called the model.
    pub misses: AtomicU64,
}

pub async fn run(exec: &Executor, step: &StepInput<'_>) -> Result<Json, StepError> {
    let config = template::render(&Json::Object(step.config.clone()), &step.context())?;
    let model = config
        .get("model")
        .and_then(Json::as_str)
        .ok_or_else(|| StepError::Fatal("config.model is required".into()))?;
    let messages = config
        .get("messages")
        .cloned()
        .ok_or_else(|| StepError::Fatal("config.messages is required".into()))?;
    let base_url = config
        .get("base_url")
        .and_then(Json::as_str)
        .unwrap_or("https://api.openai.com/v1")
        .trim_end_matches('/');
    let ttl = config.get("cache_ttl_seconds").and_then(Json::as_u64).unwrap_or(3600);
    let mut request = json!({ "model": model, "messages": messages });
    for key in ["temperature", "max_tokens"] {
        if let Some(v) = config.get(key) {
            request[key] = v.clone();
        }
    }
    // serde_json sorts object keys, so the same request always hashes the same.
    let cache_key =
        format!("{}:llm:{}", exec.prefix, sha1_smol::Sha1::from(format!("{base_url}\n{request}")).digest());
    let mut redis = exec.redis.clone();
    if ttl > 0 {
        match redis.get::<_, Option<String>>(&cache_key).await {
            Ok(Some(hit)) => {
                exec.llm_stats.hits.fetch_add(1, Ordering::Relaxed);
                let mut out: Json = serde_json::from_str(&hit).unwrap_or(Json::Null);
                out["cached"] = Json::Bool(true);
                return Ok(out);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "llm cache read failed; calling the model"),
        }
    }
    exec.llm_stats.misses.fetch_add(1, Ordering::Relaxed);
    let key =
        match config.get("api_key_env").and_then(Json::as_str) {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                StepError::Fatal(format!("environment variable {var} (api_key_env) is not set"))
            })?),
            None => exec.llm_default_key.clone(),
        };
    let mut req = exec.http.post(format!("{base_url}/chat/completions")).json(&request).timeout(step.timeout);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| StepError::retry(format!("llm call failed: {e}")))?;
    let status = resp.status();
    let retry_after =
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(http::parse_retry_after);
    let text =
        resp.text().await.map_err(|e| StepError::retry(format!("reading the llm answer failed: {e}")))?;
    // The status decides before the body is parsed: a 401 with an HTML page is not retried.
    if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
        let message = format!("llm answered HTTP {status}: {}", excerpt(&text));
        return Err(StepError::Retryable { message, retry_after });
    }
    if !status.is_success() {
        return Err(StepError::Fatal(format!("llm answered HTTP {status}: {}", excerpt(&text))));
    }
    let body: Json = serde_json::from_str(&text)
        .map_err(|e| StepError::retry(format!("llm answer is not JSON ({e}): {}", excerpt(&text))))?;
    let content = body.pointer("/choices/0/message/content").cloned().unwrap_or(Json::Null);
    let out = json!({ "content": content, "model": body.get("model").cloned().unwrap_or(json!(model)), "usage": body.get("usage").cloned().unwrap_or(Json::Null), "cached": false });
    if ttl > 0 {
        let _: Result<(), _> = redis.set_ex(&cache_key, out.to_string(), ttl).await;
    }
    Ok(out)
}
