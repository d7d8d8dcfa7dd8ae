//! A health check written with the Rust SDK, in about 20 lines.
use slipway_plugin_sdk::prelude::*;

#[derive(Deserialize)]
struct Params {
    url: String,
}

struct Ping;

impl Plugin for Ping {
    const NAME: &'static str = "ping";
    const DESCRIPTION: &'static str = "Healthy while GET url answers 2xx.";
    type Params = Params;
    fn params_schema() -> Value {
        json!({ "type": "object", "required": ["url"],
                "properties": { "url": { "type": "string" } } })
    }
}

impl HealthCheck for Ping {
    fn check(_ctx: &StepContext, params: Params) -> HealthReport {
        match http::get(&params.url) {
            Ok(r) if r.status < 300 => HealthReport::healthy(format!("{}", r.status)),
            Ok(r) => HealthReport::unhealthy(format!("status {}", r.status)),
            Err(e) => HealthReport::unhealthy(e),
        }
    }
}

slipway_plugin_sdk::export!(Ping: health_check);
