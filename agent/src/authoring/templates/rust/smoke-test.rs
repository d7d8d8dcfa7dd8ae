//! `{{name}}`: a Slipway smoke-test plugin, written with the Rust SDK.
//!
//! The agent calls `smoke_test` once after a release is activated in an
//! environment, before it is promoted: it passes when `GET url` answers
//! `expect_status` and, if set, the body contains `expect_body`. Replace the
//! test with your own.

use slipway_plugin_sdk::prelude::*;
use std::time::Duration;

/// The step's `params` from the config. The agent has already checked them
/// against `params_schema()`, so deserializing only fails if the two
/// disagree.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    url: String,
    #[serde(default = "default_status")]
    expect_status: u16,
    #[serde(default)]
    expect_body: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
}

fn default_status() -> u16 {
    200
}

fn default_timeout_ms() -> u32 {
    2000
}

struct {{type}};

impl Plugin for {{type}} {
    const NAME: &'static str = "{{name}}";
    const DESCRIPTION: &'static str =
        "Passes when GET url answers the expected status (and body substring).";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "url": { "type": "string", "pattern": "^https?://", "description": "URL to GET; its host:port must be in grants.http" },
                "expect_status": { "type": "integer", "minimum": 100, "maximum": 599, "default": 200 },
                "expect_body": { "type": "string", "description": "a substring the body must contain" },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 2000 }
            }
        })
    }
}

impl SmokeTest for {{type}} {
    fn smoke_test(ctx: &StepContext, p: Params) -> Result<String, String> {
        log::with(
            log::Level::Info,
            "smoke test",
            &[("url", p.url.as_str()), ("app", ctx.app.as_str())],
        );
        let r = http::Request::new("GET", &p.url)
            .timeout(Duration::from_millis(p.timeout_ms.into()))
            .send()
            .map_err(|e| format!("GET {e}"))?;
        if r.status != p.expect_status {
            return Err(format!(
                "GET {}: status {} (expected {})",
                p.url, r.status, p.expect_status
            ));
        }
        if let Some(needle) = &p.expect_body
            && !r.text().contains(needle.as_str())
        {
            return Err(format!("GET {}: body does not contain {needle:?}", p.url));
        }
        Ok(format!("GET {}: {}", p.url, r.status))
    }
}

slipway_plugin_sdk::export!({{type}}: smoke_test);
