//! `webhook`: tell an HTTP endpoint about every deployment state change.
//!
//! One `POST` of a small JSON document per event (`app`, `environment`,
//! `deployment_id`, `version`, `state`, `message`, `at`) to `url`, through
//! the plugin's `http` grant. A secret (a bearer token, a shared key) goes in
//! a header read with `secret()`, never in the config. Transport errors, 5xx,
//! 408 and 429 are retried after a short delay; any other non-2xx answer is
//! the receiver refusing the request and fails at once, naming the status.
//!
//! It is not a chat integration: the body is the same for every receiver.
//! Put a small relay in front for services that need their own format.

use slipway_plugin_sdk::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    secret_header: Option<SecretHeader>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_retry_delay_ms")]
    retry_delay_ms: u32,
}

/// A header whose value is a granted secret, e.g. `Authorization: Bearer …`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretHeader {
    name: String,
    secret: String,
    #[serde(default)]
    prefix: String,
}

fn default_timeout_ms() -> u32 {
    5000
}
fn default_retries() -> u32 {
    2
}
fn default_retry_delay_ms() -> u32 {
    1000
}

struct Webhook;

/// An HTTP field name (RFC 9110 `token`).
const HEADER_NAME: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

impl Plugin for Webhook {
    const NAME: &'static str = "webhook";
    const DESCRIPTION: &'static str = "POSTs each deployment state change as JSON to a URL, with optional headers and a secret header.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "url": { "type": "string", "pattern": "^https?://[^/?#]+", "description": "where to POST the event" },
                "headers": {
                    "type": "object",
                    "description": "extra request headers, name -> value (no secrets: use secret_header)",
                    "propertyNames": { "pattern": HEADER_NAME },
                    "additionalProperties": { "type": "string" }
                },
                "secret_header": {
                    "type": "object",
                    "description": "a header whose value is a secret granted to the plugin (grants.secrets)",
                    "additionalProperties": false,
                    "required": ["name", "secret"],
                    "properties": {
                        "name": { "type": "string", "pattern": HEADER_NAME, "description": "header name, e.g. Authorization" },
                        "secret": { "type": "string", "minLength": 1, "description": "name of the secret" },
                        "prefix": { "type": "string", "default": "", "description": "put before the value, e.g. \"Bearer \"" }
                    }
                },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 5000 },
                "retries": { "type": "integer", "minimum": 0, "maximum": 10, "default": 2 },
                "retry_delay_ms": { "type": "integer", "minimum": 0, "maximum": 60000, "default": 1000 }
            }
        })
    }
}

/// The JSON body: what the event carries, plus when it was sent.
fn body(event: &Event, at: Option<String>) -> Value {
    let mut body = json!({
        "app": event.app,
        "deployment_id": event.deployment_id,
        "version": event.version,
        "state": event.state,
        "message": event.message,
    });
    if let Some(env) = &event.environment {
        body["environment"] = json!(env);
    }
    if let Some(at) = at {
        body["at"] = json!(at);
    }
    body
}

/// One failed attempt, and whether another could succeed.
struct Failure {
    message: String,
    retry: bool,
}

fn post(p: &Params, headers: &[(String, String)], body: &[u8]) -> Result<u16, Failure> {
    // A length rather than a chunked body: some receivers refuse chunks.
    let mut request = http::Request::new("POST", &p.url)
        .timeout(Duration::from_millis(p.timeout_ms.into()))
        .max_body(4096)
        .header("Content-Length", &body.len().to_string())
        .body(body.to_vec());
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("Content-Type", "application/json");
    }
    for (name, value) in headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
    {
        request = request.header(name, value);
    }
    let response = request.send().map_err(|message| Failure {
        message,
        retry: true,
    })?;
    if (200..300).contains(&response.status) {
        return Ok(response.status);
    }
    let text = response.text();
    let text = text.trim();
    let answer: String = text.chars().take(200).collect();
    let answer = if answer.is_empty() {
        String::new()
    } else {
        format!(": {answer}")
    };
    Err(Failure {
        message: format!(
            "POST {}: status {} (expected 2xx){answer}",
            p.url, response.status
        ),
        retry: matches!(response.status, 408 | 429 | 500..=599),
    })
}

impl Notify for Webhook {
    fn notify(event: &Event, p: Params) -> Result<(), String> {
        let mut headers: Vec<(String, String)> = p.headers.clone().into_iter().collect();
        if let Some(h) = &p.secret_header {
            let value = secret(&h.secret).map_err(|e| format!("secret_header: {e}"))?;
            headers.push((h.name.clone(), format!("{}{value}", h.prefix)));
        }
        let body = body(event, now_rfc3339()).to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match post(&p, &headers, body.as_bytes()) {
                Ok(status) => {
                    log::with(
                        log::Level::Info,
                        "event sent",
                        &[("state", &event.state), ("status", &status.to_string())],
                    );
                    return Ok(());
                }
                Err(f) if f.retry && attempt <= p.retries => {
                    log::with(
                        log::Level::Debug,
                        "attempt failed",
                        &[("error", &f.message)],
                    );
                    std::thread::sleep(Duration::from_millis(p.retry_delay_ms.into()));
                }
                Err(f) if attempt > 1 => {
                    return Err(format!("{} (after {attempt} attempts)", f.message));
                }
                Err(f) => return Err(f.message),
            }
        }
    }
}

/// Now as `2024-05-01T12:34:56Z`, if the host gives the plugin a clock.
fn now_rfc3339() -> Option<String> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(rfc3339(secs))
}

/// Seconds since the epoch as an RFC 3339 UTC time (Howard Hinnant's
/// days-to-civil algorithm; no date crate for one format).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

slipway_plugin_sdk::export!(Webhook: notify);

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_566_896), "2024-05-01T12:34:56Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
