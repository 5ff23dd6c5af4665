//! Workflow specs as users write them, and their validation.
//!
//! Stored as JSON in Redis and written by users in YAML (`aura workflow apply`), so every
//! type here is serde. Durations are integer milliseconds (`timeout_ms`), which read the
//! same in YAML, JSON and protobuf conversions.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::EngineError;

/// Step kinds the built-in worker executes (plus `external`, run by outside workers).
pub const KINDS: &[&str] = &["noop", "http", "transform", "delay", "llm", "external"];

/// The queue built-in steps are claimed from.
pub const BUILTIN_QUEUE: &str = "builtin";

/// Most steps a workflow may have.
pub const MAX_STEPS: usize = 1000;

/// A workflow definition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The DAG.
    pub steps: Vec<StepSpec>,
    /// Defaults for every step.
    #[serde(default, skip_serializing_if = "StepDefaults::is_empty")]
    pub defaults: StepDefaults,
    /// At most this many runs active at once; the rest wait in order (0: no limit).
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub max_concurrent_runs: u32,
    /// A run still unfinished this long after it started fails (0: no limit), ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
}

/// One step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique id within the workflow.
    pub id: String,
    /// Kind (see [`KINDS`]).
    pub kind: String,
    /// Kind-specific configuration.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Json>,
    /// Steps that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Retry policy (unset fields inherit).
    #[serde(default, skip_serializing_if = "RetrySpec::is_empty")]
    pub retry: RetrySpec,
    /// Attempt timeout in ms (0: inherit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
    /// Failing for good skips dependents instead of failing the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_failure: bool,
}

/// A partial retry policy; unset (zero) fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total attempts.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub max_attempts: u32,
    /// First backoff, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub initial_backoff_ms: u64,
    /// Largest backoff, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_backoff_ms: u64,
    /// Growth factor.
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub multiplier: f64,
    /// Randomised fraction.
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub jitter: f64,
}

/// Defaults for every step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// Retry policy.
    #[serde(default, skip_serializing_if = "RetrySpec::is_empty")]
    pub retry: RetrySpec,
    /// Attempt timeout, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}

impl RetrySpec {
    fn is_empty(&self) -> bool {
        *self == RetrySpec::default()
    }
}

impl StepDefaults {
    fn is_empty(&self) -> bool {
        *self == StepDefaults::default()
    }
}

/// Default attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl WorkflowSpec {
    /// The effective retry policy of a step: step, then workflow defaults, then built-in.
    pub fn retry_policy(&self, step: &StepSpec) -> aura_queue::RetryPolicy {
        let base = aura_queue::RetryPolicy::default();
        let d = &self.defaults.retry;
        let s = &step.retry;
        let pick_u = |a: u64, b: u64, c: Duration| {
            if a > 0 {
                Duration::from_millis(a)
            } else if b > 0 {
                Duration::from_millis(b)
            } else {
                c
            }
        };
        let pick_f = |a: f64, b: f64, c: f64| {
            if a > 0.0 {
                a
            } else if b > 0.0 {
                b
            } else {
                c
            }
        };
        aura_queue::RetryPolicy {
            max_attempts: if s.max_attempts > 0 {
                s.max_attempts
            } else if d.max_attempts > 0 {
                d.max_attempts
            } else {
                base.max_attempts
            },
            initial_backoff: pick_u(s.initial_backoff_ms, d.initial_backoff_ms, base.initial_backoff),
            max_backoff: pick_u(s.max_backoff_ms, d.max_backoff_ms, base.max_backoff),
            multiplier: pick_f(s.multiplier, d.multiplier, base.multiplier),
            jitter: pick_f(s.jitter, d.jitter, base.jitter),
        }
    }

    /// The effective attempt timeout of a step.
    pub fn timeout(&self, step: &StepSpec) -> Duration {
        if step.timeout_ms > 0 {
            Duration::from_millis(step.timeout_ms)
        } else if self.defaults.timeout_ms > 0 {
            Duration::from_millis(self.defaults.timeout_ms)
        } else {
            DEFAULT_TIMEOUT
        }
    }

    /// The queue a step's tasks wait in.
    pub fn queue_of(step: &StepSpec) -> String {
        if step.kind == "external" {
            step.config.get("queue").and_then(Json::as_str).unwrap_or_default().to_string()
        } else {
            BUILTIN_QUEUE.to_string()
        }
    }

    /// Step ids nothing depends on: their outputs form the run's output.
    pub fn terminal_steps(&self) -> Vec<&str> {
        let used: HashSet<&str> =
            self.steps.iter().flat_map(|s| s.depends_on.iter().map(String::as_str)).collect();
        self.steps.iter().map(|s| s.id.as_str()).filter(|id| !used.contains(id)).collect()
    }

    /// For each step, the steps that depend on it.
    pub fn dependents(&self) -> HashMap<&str, Vec<&str>> {
        let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
        for step in &self.steps {
            for dep in &step.depends_on {
                map.entry(dep.as_str()).or_default().push(step.id.as_str());
            }
        }
        map
    }

    /// Checks everything that can be checked before a run: names, ids, dependencies,
    /// cycles, kinds and their config, limits. Errors name the field.
    pub fn validate(&self, max_bytes: usize) -> Result<(), EngineError> {
        validate_name(&self.name)?;
        if self.description.len() > 4096 {
            return Err(EngineError::invalid("spec.description", "must be at most 4096 bytes"));
        }
        let size = serde_json::to_vec(self).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > max_bytes {
            return Err(EngineError::invalid("spec", format!("is {size} bytes; the limit is {max_bytes}")));
        }
        if self.steps.is_empty() {
            return Err(EngineError::invalid("spec.steps", "a workflow needs at least one step"));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(EngineError::invalid(
                "spec.steps",
                format!("{} steps; the limit is {MAX_STEPS}", self.steps.len()),
            ));
        }
        validate_retry("spec.defaults.retry", &self.defaults.retry)?;
        let mut ids = HashSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let field = format!("spec.steps[{i}]");
            crate::validate::step_id(&format!("{field}.id"), &step.id)?;
            if !ids.insert(step.id.as_str()) {
                return Err(EngineError::invalid(
                    format!("{field}.id"),
                    format!("duplicate step id {:?}", step.id),
                ));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            let field = format!("spec.steps[{i}]");
            if !KINDS.contains(&step.kind.as_str()) {
                return Err(EngineError::invalid(
                    format!("{field}.kind"),
                    format!("unknown kind {:?}; expected one of {}", step.kind, KINDS.join(", ")),
                ));
            }
            let mut seen = HashSet::new();
            for dep in &step.depends_on {
                if dep == &step.id {
                    return Err(EngineError::invalid(
                        format!("{field}.depends_on"),
                        format!("step {:?} depends on itself", step.id),
                    ));
                }
                if !ids.contains(dep.as_str()) {
                    return Err(EngineError::invalid(
                        format!("{field}.depends_on"),
                        format!("unknown step {dep:?}"),
                    ));
                }
                if !seen.insert(dep) {
                    return Err(EngineError::invalid(
                        format!("{field}.depends_on"),
                        format!("{dep:?} listed twice"),
                    ));
                }
            }
            validate_retry(&format!("{field}.retry"), &step.retry)?;
            validate_config(&field, step)?;
        }
        if let Some(cycle_member) = self.find_cycle() {
            return Err(EngineError::invalid(
                "spec.steps",
                format!("dependency cycle through step {cycle_member:?}"),
            ));
        }
        Ok(())
    }

    /// Kahn's algorithm: a step left unsorted sits on a cycle.
    fn find_cycle(&self) -> Option<String> {
        let mut indegree: HashMap<&str, usize> =
            self.steps.iter().map(|s| (s.id.as_str(), s.depends_on.len())).collect();
        let dependents = self.dependents();
        let mut ready: VecDeque<&str> =
            indegree.iter().filter(|(_, d)| **d == 0).map(|(id, _)| *id).collect();
        let mut sorted = 0;
        while let Some(id) = ready.pop_front() {
            sorted += 1;
            for dep in dependents.get(id).into_iter().flatten() {
                let d = indegree.get_mut(dep).expect("known step");
                *d -= 1;
                if *d == 0 {
                    ready.push_back(dep);
                }
            }
        }
        if sorted == self.steps.len() {
            return None;
        }
        let mut stuck: Vec<&str> = indegree.into_iter().filter(|(_, d)| *d > 0).map(|(id, _)| id).collect();
        stuck.sort();
        stuck.first().map(|s| s.to_string())
    }
}

/// Workflow names: 1-128 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    crate::validate::workflow_name("spec.name", name)
}

fn validate_retry(field: &str, r: &RetrySpec) -> Result<(), EngineError> {
    if r.multiplier != 0.0 && !(r.multiplier >= 1.0 && r.multiplier <= 100.0) {
        return Err(EngineError::invalid(format!("{field}.multiplier"), "must be between 1 and 100"));
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(EngineError::invalid(format!("{field}.jitter"), "must be between 0 and 1"));
    }
    if r.max_attempts > 100 {
        return Err(EngineError::invalid(format!("{field}.max_attempts"), "must be at most 100"));
    }
    Ok(())
}

fn str_field<'a>(
    field: &str,
    step: &'a StepSpec,
    key: &str,
    required: bool,
) -> Result<Option<&'a str>, EngineError> {
    match step.config.get(key) {
        None if required => Err(EngineError::invalid(format!("{field}.config.{key}"), "is required")),
        None => Ok(None),
        Some(Json::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(EngineError::invalid(format!("{field}.config.{key}"), "must be a non-empty string")),
    }
}

fn num_field(
    field: &str,
    step: &StepSpec,
    key: &str,
    required: bool,
    max: f64,
) -> Result<Option<f64>, EngineError> {
    match step.config.get(key) {
        None if required => Err(EngineError::invalid(format!("{field}.config.{key}"), "is required")),
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if (0.0..=max).contains(&n) => Ok(Some(n)),
            _ => Err(EngineError::invalid(
                format!("{field}.config.{key}"),
                format!("must be a number between 0 and {max}"),
            )),
        },
    }
}

fn allow_only(field: &str, step: &StepSpec, allowed: &[&str]) -> Result<(), EngineError> {
    for key in step.config.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(EngineError::invalid(
                format!("{field}.config.{key}"),
                format!("unknown key for kind {:?}; expected one of: {}", step.kind, allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Structural checks of each kind's config keys (the public contract in the README).
fn validate_config(field: &str, step: &StepSpec) -> Result<(), EngineError> {
    match step.kind.as_str() {
        "noop" => allow_only(field, step, &[]),
        "http" => {
            allow_only(
                field,
                step,
                &["method", "url", "headers", "body", "timeout_ms", "max_response_bytes"],
            )?;
            let url = str_field(field, step, "url", true)?.unwrap_or_default();
            if !(url.contains("{{") || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(EngineError::invalid(
                    format!("{field}.config.url"),
                    "must start with http:// or https://",
                ));
            }
            if let Some(method) = str_field(field, step, "method", false)?
                && !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
                    .contains(&method.to_ascii_uppercase().as_str())
            {
                return Err(EngineError::invalid(
                    format!("{field}.config.method"),
                    format!("unsupported method {method:?}"),
                ));
            }
            if let Some(h) = step.config.get("headers")
                && !h.as_object().is_some_and(|m| m.values().all(Json::is_string))
            {
                return Err(EngineError::invalid(
                    format!("{field}.config.headers"),
                    "must map header names to strings",
                ));
            }
            num_field(field, step, "timeout_ms", false, 3_600_000.0)?;
            num_field(field, step, "max_response_bytes", false, 1_073_741_824.0)?;
            Ok(())
        }
        "transform" => {
            allow_only(field, step, &["jq"])?;
            str_field(field, step, "jq", true).map(|_| ())
        }
        "delay" => {
            allow_only(field, step, &["seconds"])?;
            num_field(field, step, "seconds", true, 30.0 * 24.0 * 3600.0).map(|_| ())
        }
        "llm" => {
            allow_only(
                field,
                step,
                &[
                    "base_url",
                    "model",
                    "messages",
                    "temperature",
                    "max_tokens",
                    "api_key_env",
                    "cache_ttl_seconds",
                ],
            )?;
            str_field(field, step, "model", true)?;
            str_field(field, step, "base_url", false)?;
            str_field(field, step, "api_key_env", false)?;
            if !step.config.get("messages").is_some_and(Json::is_array) {
                return Err(EngineError::invalid(
                    format!("{field}.config.messages"),
                    "is required: a list of {role, content}",
                ));
            }
            num_field(field, step, "temperature", false, 2.0)?;
            num_field(field, step, "max_tokens", false, 1_000_000.0)?;
            num_field(field, step, "cache_ttl_seconds", false, 365.0 * 24.0 * 3600.0)?;
            Ok(())
        }
        "external" => {
            allow_only(field, step, &["queue"])?;
            let queue = str_field(field, step, "queue", true)?.unwrap_or_default();
            aura_queue::validate_name("queue", queue)
                .map_err(|e| EngineError::invalid(format!("{field}.config.queue"), e.to_string()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(steps: Json) -> WorkflowSpec {
        serde_json::from_value(json!({"name": "wf", "steps": steps})).unwrap()
    }

    fn err(s: &WorkflowSpec) -> String {
        s.validate(1 << 20).unwrap_err().to_string()
    }

    #[test]
    fn valid_dag_passes() {
        let s = spec(json!([
            {"id": "a", "kind": "noop"},
            {"id": "b", "kind": "noop", "depends_on": ["a"]},
            {"id": "c", "kind": "noop", "depends_on": ["a"]},
            {"id": "d", "kind": "noop", "depends_on": ["b", "c"]}
        ]));
        s.validate(1 << 20).unwrap();
        assert_eq!(s.terminal_steps(), vec!["d"]);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert!(
            err(&spec(json!([{"id": "a", "kind": "noop", "depends_on": ["a"]}])))
                .contains("depends on itself")
        );
        assert!(
            err(&spec(json!([{"id": "a", "kind": "noop", "depends_on": ["x"]}])))
                .contains("unknown step \"x\"")
        );
        assert!(
            err(&spec(json!([{"id": "a", "kind": "noop"}, {"id": "a", "kind": "noop"}])))
                .contains("duplicate step id")
        );
        assert!(err(&spec(json!([{"id": "a", "kind": "teleport"}]))).contains("unknown kind"));
        let cycle = spec(json!([
            {"id": "a", "kind": "noop", "depends_on": ["b"]},
            {"id": "b", "kind": "noop", "depends_on": ["a"]}
        ]));
        assert!(err(&cycle).contains("cycle"));
        assert!(
            err(&spec(json!([{"id": "h", "kind": "http", "config": {"url": "ftp://x"}}])))
                .contains("spec.steps[0].config.url")
        );
        assert!(
            err(&spec(json!([{"id": "t", "kind": "transform"}])))
                .contains("spec.steps[0].config.jq: is required")
        );
        let big = spec(json!([{"id": "a", "kind": "noop"}]));
        assert!(big.validate(10).unwrap_err().to_string().contains("the limit is 10"));
    }

    #[test]
    fn retry_policy_inherits_field_by_field() {
        let mut s = spec(json!([{"id": "a", "kind": "noop", "retry": {"max_attempts": 5}}]));
        s.defaults.retry.initial_backoff_ms = 100;
        let p = s.retry_policy(&s.steps[0]);
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.initial_backoff, Duration::from_millis(100));
        assert_eq!(p.multiplier, 2.0);
    }
}
