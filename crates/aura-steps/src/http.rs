//! `http`: config keys `method`, `url`, `headers`, `body`, `timeout_ms`,
//! `max_response_bytes`. Output: `{status, headers, body}` (body parsed when JSON).

use std::time::Duration;

use serde_json::{Map, Value as Json, json};

use crate::{StepError, StepInput, template};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

pub async fn run(client: &reqwest::Client, step: &StepInput<'_>) -> Result<Json, StepError> {
    let config = template::render(&Json::Object(step.config.clone()), &step.context())?;
    let get = |k: &str| config.get(k);
    let url =
        get("url").and_then(Json::as_str).ok_or_else(|| StepError::Fatal("config.url is required".into()))?;
    let url = reqwest::Url::parse(url)
        .map_err(|e| StepError::Fatal(format!("config.url {url:?} is not a valid URL: {e}")))?;
    let method = get("method").and_then(Json::as_str).unwrap_or("GET").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| StepError::Fatal(format!("config.method {method:?} is not an HTTP method")))?;
    let timeout = get("timeout_ms")
        .and_then(Json::as_u64)
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
        .min(step.timeout);
    let max_bytes = get("max_response_bytes").and_then(Json::as_u64).unwrap_or(DEFAULT_MAX_BYTES);

    let mut req = client.request(method, url.clone()).timeout(timeout);
    if let Some(Json::Object(headers)) = get("headers") {
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str().unwrap_or_default());
        }
    }
    req = match get("body") {
        None | Some(Json::Null) => req,
        Some(Json::String(s)) => req.body(s.clone()),
        Some(other) => req.json(other),
    };
    let mut resp = req.send().await.map_err(|e| classify(&url, e))?;
    let status = resp.status();
    let headers: Map<String, Json> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), Json::String(String::from_utf8_lossy(v.as_bytes()).into_owned())))
        .collect();
    if resp.content_length().is_some_and(|n| n > max_bytes) {
        return Err(StepError::Fatal(format!(
            "response from {url} is larger than max_response_bytes ({max_bytes})"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&url, e))? {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(StepError::Fatal(format!(
                "response from {url} is larger than max_response_bytes ({max_bytes})"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let is_json = headers.get("content-type").and_then(Json::as_str).is_some_and(|c| c.contains("json"));
    let body = if is_json {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Json::String(String::from_utf8_lossy(&body).into_owned())
    };
    let code = status.as_u16();
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return Ok(json!({ "status": code, "headers": headers, "body": body }));
    }
    let message = format!("{url} answered HTTP {code}");
    if code == 429 {
        let retry_after =
            headers.get("retry-after").and_then(Json::as_str).and_then(|s| s.trim().parse::<u64>().ok());
        return Err(StepError::Retryable { message, retry_after: retry_after.map(Duration::from_secs) });
    }
    if status.is_server_error() || code == 408 {
        return Err(StepError::retry(message));
    }
    Err(StepError::Fatal(message))
}

fn classify(url: &reqwest::Url, e: reqwest::Error) -> StepError {
    if e.is_timeout() {
        StepError::retry(format!("{url} timed out"))
    } else if e.is_connect() || e.is_request() || e.is_body() || e.is_decode() {
        StepError::retry(format!("{url}: {e}"))
    } else {
        StepError::Fatal(format!("{url}: {e}"))
    }
}
