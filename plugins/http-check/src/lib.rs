//! `http-check`: health-check and smoke-test a release over HTTP.
//!
//! One request per attempt; passes when the status matches and, if set, the
//! body contains a substring. Retries with a delay before failing, so a
//! server still starting is not reported as broken.

use slipway_plugin_sdk::prelude::*;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_status")]
    expect_status: u16,
    #[serde(default)]
    expect_body: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
    #[serde(default)]
    retries: u32,
    #[serde(default = "default_retry_delay_ms")]
    retry_delay_ms: u32,
}

fn default_method() -> String {
    "GET".into()
}
fn default_status() -> u16 {
    200
}
fn default_timeout_ms() -> u32 {
    2000
}
fn default_retry_delay_ms() -> u32 {
    500
}

struct HttpCheck;

impl Plugin for HttpCheck {
    const NAME: &'static str = "http-check";
    const DESCRIPTION: &'static str =
        "Sends an HTTP request and checks the status and, optionally, a body substring.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "url": { "type": "string", "pattern": "^https?://", "description": "URL to request" },
                "method": { "type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"], "default": "GET" },
                "expect_status": { "type": "integer", "minimum": 100, "maximum": 599, "default": 200 },
                "expect_body": { "type": "string", "description": "substring the body must contain" },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 2000 },
                "retries": { "type": "integer", "minimum": 0, "maximum": 100, "default": 0 },
                "retry_delay_ms": { "type": "integer", "minimum": 0, "maximum": 600000, "default": 500 }
            }
        })
    }
}

/// One attempt: Ok with a short report, or Err with why it failed.
fn probe(p: &Params) -> Result<String, String> {
    let started = std::time::Instant::now();
    let response = http::Request::new(&p.method, &p.url)
        .timeout(Duration::from_millis(p.timeout_ms.into()))
        .max_body(256 * 1024)
        .send()?;
    let took = started.elapsed().as_millis();
    if response.status != p.expect_status {
        return Err(format!(
            "{} {}: status {} (expected {}) after {took} ms",
            p.method, p.url, response.status, p.expect_status
        ));
    }
    if let Some(needle) = p
        .expect_body
        .as_ref()
        .filter(|n| !response.text().contains(n.as_str()))
    {
        return Err(format!(
            "{} {}: body does not contain {needle:?} (status {}, {took} ms)",
            p.method, p.url, response.status
        ));
    }
    Ok(format!(
        "{} {}: {} in {took} ms",
        p.method, p.url, response.status
    ))
}

fn probe_with_retries(p: &Params) -> Result<String, String> {
    let mut attempt = 0;
    loop {
        match probe(p) {
            Ok(report) => return Ok(report),
            Err(e) if attempt >= p.retries => {
                return Err(if p.retries > 0 {
                    format!("{e} (after {} attempts)", attempt + 1)
                } else {
                    e
                });
            }
            Err(e) => {
                log::with(log::Level::Debug, "attempt failed", &[("error", &e)]);
                attempt += 1;
                std::thread::sleep(Duration::from_millis(p.retry_delay_ms.into()));
            }
        }
    }
}

impl HealthCheck for HttpCheck {
    fn check(_ctx: &StepContext, p: Params) -> HealthReport {
        match probe_with_retries(&p) {
            Ok(report) => HealthReport::healthy(report),
            Err(e) => HealthReport::unhealthy(e),
        }
    }
}

impl SmokeTest for HttpCheck {
    fn smoke_test(_ctx: &StepContext, p: Params) -> Result<String, String> {
        probe_with_retries(&p)
    }
}

slipway_plugin_sdk::export!(HttpCheck: health_check, smoke_test);
