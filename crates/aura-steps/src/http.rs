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
    let url = parse_url(url).map_err(|e| StepError::Fatal(format!("config.url: {e}")))?;
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
        let retry_after = headers.get("retry-after").and_then(Json::as_str).and_then(parse_retry_after);
        return Err(StepError::Retryable { message, retry_after });
    }
    if status.is_server_error() || code == 408 {
        return Err(StepError::retry(message));
    }
    Err(StepError::Fatal(message))
}

/// An absolute `http`/`https` URL with a host.
pub fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(url)
}

/// Longest wait a `Retry-After` may impose (a bogus value must not park a step for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After`: delay-seconds, or an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = parse_http_date(value)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            Duration::from_secs(at.saturating_sub(now))
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Seconds since the epoch of an IMF-fixdate (the form RFC 9110 requires senders to use).
fn parse_http_date(s: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let day: u64 = day.parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else { return None };
    if !(1..=31).contains(&day) || year < 1970 || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years >= 1970.
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(parse_url("https://example.com/x?y=1").is_ok());
        assert!(parse_url("ftp://example.com").unwrap_err().contains("http://"));
        assert!(parse_url("http://exa mple.com").unwrap_err().contains("not a valid URL"));
        assert!(parse_url("/relative").is_err());
    }
}
