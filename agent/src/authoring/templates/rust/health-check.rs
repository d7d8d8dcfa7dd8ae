//! `{{name}}`: a Slipway health-check plugin, written with the Rust SDK.
//!
//! The agent calls `check` at the environment's `interval` while a new
//! release bakes and, after promotion, while it runs: healthy while
//! `GET url` answers `expect_status`. Replace the probe with your own.

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
    const DESCRIPTION: &'static str = "Healthy while GET url answers the expected status.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "url": { "type": "string", "pattern": "^https?://", "description": "URL to GET; its host:port must be in grants.http" },
                "expect_status": { "type": "integer", "minimum": 100, "maximum": 599, "default": 200 },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 2000 }
            }
        })
    }
}

impl HealthCheck for {{type}} {
    fn check(ctx: &StepContext, p: Params) -> HealthReport {
        log::with(
            log::Level::Debug,
            "checking",
            &[("url", p.url.as_str()), ("app", ctx.app.as_str())],
        );
        let answer = http::Request::new("GET", &p.url)
            .timeout(Duration::from_millis(p.timeout_ms.into()))
            .send();
        match answer {
            Ok(r) if r.status == p.expect_status => {
                HealthReport::healthy(format!("GET {}: {}", p.url, r.status))
            }
            Ok(r) => HealthReport::unhealthy(format!(
                "GET {}: status {} (expected {})",
                p.url, r.status, p.expect_status
            )),
            Err(e) => HealthReport::unhealthy(format!("GET {e}")),
        }
    }
}

slipway_plugin_sdk::export!({{type}}: health_check);
