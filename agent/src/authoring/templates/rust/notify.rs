//! `{{name}}`: a Slipway notify plugin, written with the Rust SDK.
//!
//! The agent calls `notify` for every state change of an app's deployments
//! (started, promoted, succeeded, failed, rolled-back, ...), in order, in the
//! background: a failure is logged, never fails the deployment. This one
//! POSTs the event as JSON to `url`. Replace it with your own.

use slipway_plugin_sdk::prelude::*;
use std::time::Duration;

/// The step's `params` from the config. The agent has already checked them
/// against `params_schema()`, so deserializing only fails if the two
/// disagree.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    url: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
}

fn default_timeout_ms() -> u32 {
    5000
}

struct {{type}};

impl Plugin for {{type}} {
    const NAME: &'static str = "{{name}}";
    const DESCRIPTION: &'static str = "POSTs every deployment event as JSON to url.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "url": { "type": "string", "pattern": "^https?://", "description": "URL to POST to; its host:port must be in grants.http" },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 5000 }
            }
        })
    }
}

impl Notify for {{type}} {
    fn notify(event: &Event, p: Params) -> Result<(), String> {
        let body = json!({
            "app": event.app,
            "environment": event.environment,
            "deployment_id": event.deployment_id,
            "version": event.version,
            "state": event.state,
            "message": event.message,
        });
        let body = body.to_string();
        let r = http::Request::new("POST", &p.url)
            .header("content-type", "application/json")
            // A length, not a chunked body: some servers read only the former.
            .header("content-length", &body.len().to_string())
            .body(body)
            .timeout(Duration::from_millis(p.timeout_ms.into()))
            .send()
            .map_err(|e| format!("POST {e}"))?;
        if !(200..300).contains(&r.status) {
            return Err(format!(
                "POST {}: status {} (expected 2xx)",
                p.url, r.status
            ));
        }
        log::with(
            log::Level::Debug,
            "notified",
            &[("state", event.state.as_str()), ("url", p.url.as_str())],
        );
        Ok(())
    }
}

slipway_plugin_sdk::export!({{type}}: notify);
