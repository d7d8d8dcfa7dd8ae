//! Test fixture: a health check built against `slipway:plugin@0.1.9`
//! (`wit/api.wit` here), without the SDK.

wit_bindgen::generate!({ path: "wit", world: "health-check" });

use exports::slipway::plugin::health_check_step::Guest as Check;
use exports::slipway::plugin::plugin::Guest as Describe;
use slipway::plugin::types::{HealthReport, HealthStatus, PluginInfo, StepContext, StepKind};

struct Fixture;

impl Describe for Fixture {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "api-patch".into(),
            version: "1.0.0".into(),
            api_version: "0.1.9".into(),
            kinds: vec![StepKind::HealthCheck],
            params_schema: "{}".into(),
            description: "built against slipway:plugin@0.1.9".into(),
        }
    }
}

impl Check for Fixture {
    fn check(_ctx: StepContext) -> HealthReport {
        HealthReport {
            status: HealthStatus::Healthy,
            message: "api 0.1.9".into(),
        }
    }
}

// Exports only on wasm32: their names are no host linker symbols.
#[cfg(target_arch = "wasm32")]
export!(Fixture);
