//! The built-in step kinds, free of gRPC types.
//!
//! # Layout
//! - [`Executor::run`] — dispatch by kind.
//! - `template.rs`: `{{ input.x }}` / `{{ steps.<id>.output.y }}` (minijinja, strict: an
//!   unknown variable is an error, not an empty string).
//! - `http.rs`: HTTP calls with the retry rules (5xx/timeouts/connection errors retry; 429
//!   honours Retry-After; other 4xx fail at once) and a response size limit.
//! - `transform.rs`: jq programs (jaq) over `{input, steps}`.
//! - `llm.rs`: OpenAI-compatible chat completions cached in Redis.
#![forbid(unsafe_code)]

mod http;
mod llm;
mod template;
mod transform;

use std::{sync::Arc, time::Duration};

use aura_common::redis::RedisConn;
use serde_json::{Map, Value as Json, json};

pub use llm::LlmStats;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    /// Worth another attempt (after `retry_after`, if given).
    #[error("{message}")]
    Retryable {
        /// What happened.
        message: String,
        /// Minimum wait, e.g. from an HTTP 429's Retry-After.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (bad config, 4xx, jq error).
    #[error("{0}")]
    Fatal(String),
}

impl StepError {
    pub(crate) fn retry(message: impl Into<String>) -> Self {
        StepError::Retryable { message: message.into(), retry_after: None }
    }
}

/// What a step attempt sees.
#[derive(Debug, Clone)]
pub struct StepInput<'a> {
    /// Kind.
    pub kind: &'a str,
    /// Config from the spec.
    pub config: &'a Map<String, Json>,
    /// Run input.
    pub input: &'a Map<String, Json>,
    /// Outputs of the dependencies, by step id.
    pub dependency_outputs: &'a Map<String, Json>,
    /// Time this attempt may take.
    pub timeout: Duration,
}

impl StepInput<'_> {
    /// The templating / jq context: `{input, steps: {<id>: {output}}}`.
    pub fn context(&self) -> Json {
        let steps: Map<String, Json> =
            self.dependency_outputs.iter().map(|(id, out)| (id.clone(), json!({ "output": out }))).collect();
        json!({ "input": self.input, "steps": steps })
    }
}

/// Executes built-in steps. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    http: reqwest::Client,
    redis: RedisConn,
    prefix: String,
    llm_stats: Arc<LlmStats>,
    llm_default_key: Option<String>,
}

impl Executor {
    /// An executor using `redis` for the LLM cache. `llm_default_key` is used when a step
    /// names no `api_key_env`.
    pub fn new(redis: RedisConn, prefix: &str, llm_default_key: Option<String>) -> Self {
        // ring as the TLS provider: builds in a fraction of aws-lc's time.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("the HTTP client's TLS configuration is valid");
        Executor { http, redis, prefix: prefix.to_string(), llm_stats: Arc::default(), llm_default_key }
    }

    /// LLM cache counters.
    pub fn llm_stats(&self) -> &LlmStats {
        &self.llm_stats
    }

    /// Runs one attempt.
    pub async fn run(&self, step: &StepInput<'_>) -> Result<Json, StepError> {
        match step.kind {
            "noop" => Ok(Json::Object(step.input.clone())),
            "delay" => {
                // The wait already happened in the queue (a delayed job): durable across
                // restarts, and no worker slot is held while waiting.
                Ok(json!({ "delayed_seconds": step.config.get("seconds").cloned().unwrap_or(json!(0)) }))
            }
            "transform" => transform::run(step).await,
            "http" => http::run(&self.http, step).await,
            "llm" => llm::run(self, step).await,
            "external" => Err(StepError::Fatal(
                "external steps are executed by outside workers, not the built-in one".into(),
            )),
            other => Err(StepError::Fatal(format!("unknown step kind {other:?}"))),
        }
    }
}

/// Checks what can be checked of a step's config before any run: jq programs compile,
/// templates parse, and URLs without templates are valid `http(s)` URLs. Returns the config
/// key at fault and why.
pub fn validate_config(kind: &str, config: &Map<String, Json>) -> Result<(), (String, String)> {
    if kind == "transform"
        && let Some(Json::String(program)) = config.get("jq")
    {
        transform::compile_check(program).map_err(|e| ("jq".to_string(), e))?;
    }
    let url_key = match kind {
        "http" => Some("url"),
        "llm" => Some("base_url"),
        _ => None,
    };
    if let Some(key) = url_key
        && let Some(Json::String(url)) = config.get(key)
        && !template::is_template(url)
    {
        http::parse_url(url).map_err(|e| (key.to_string(), e))?;
    }
    for (key, value) in config {
        template::check_syntax(value).map_err(|e| (key.clone(), e))?;
        template::check_variables(value, None).map_err(|e| (key.clone(), e))?;
    }
    Ok(())
}

/// [`validate_config`], plus: templates read `steps.<id>` only for ids in `depends_on`
/// (no other step's output is ever passed to a step).
pub fn validate_step(
    kind: &str,
    config: &Map<String, Json>,
    depends_on: &[String],
) -> Result<(), (String, String)> {
    validate_config(kind, config)?;
    for (key, value) in config {
        template::check_variables(value, Some(depends_on)).map_err(|e| (key.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: Json) -> Map<String, Json> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn validate_config_names_the_key_at_fault() {
        let key = |kind: &str, c: Json| validate_config(kind, &config(c)).map_err(|(key, _)| key);
        assert_eq!(key("transform", json!({"jq": ".[ | oops"})), Err("jq".into()));
        assert_eq!(key("http", json!({"url": "http://exa mple.com/"})), Err("url".into()));
        assert_eq!(key("http", json!({"url": "http://x/{{ broken"})), Err("url".into()));
        assert_eq!(key("llm", json!({"base_url": "localhost:8080", "model": "m"})), Err("base_url".into()));
        assert_eq!(key("http", json!({"url": "https://example.com/{{ input.id }}"})), Ok(()));
        assert_eq!(key("http", json!({"url": "{{ input.url }}"})), Ok(()), "checked when rendered");
        assert_eq!(key("http", json!({"url": "http://x", "body": {"a": ["{{ x"]}})), Err("body".into()));
        assert_eq!(key("http", json!({"url": "http://x/{{ inputs.id }}"})), Err("url".into()));
    }

    #[test]
    fn validate_step_checks_step_references_against_dependencies() {
        let deps = ["fetch".to_string()];
        let config = config(json!({"url": "http://x/{{ steps.fetch.output.body.id }}"}));
        assert_eq!(validate_step("http", &config, &deps), Ok(()));
        let config = config_of("{{ steps.fecth.output.body.id }}");
        let (key, why) = validate_step("http", &config, &deps).unwrap_err();
        assert_eq!(key, "url");
        assert!(why.contains("does not depend on \"fecth\""), "{why}");
    }

    fn config_of(url: &str) -> Map<String, Json> {
        config(json!({ "url": url }))
    }
}
