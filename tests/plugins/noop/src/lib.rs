//! Test fixture: a health check that does nothing, to measure the bare cost
//! of a plugin step (fresh instance + call).

use slipway_plugin_sdk::prelude::*;

struct Noop;

impl Plugin for Noop {
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "Always healthy; does nothing.";
    type Params = Value;
    fn params_schema() -> Value {
        json!({})
    }
}

impl HealthCheck for Noop {
    fn check(_ctx: &StepContext, _params: Value) -> HealthReport {
        HealthReport::healthy("ok")
    }
}

slipway_plugin_sdk::export!(Noop: health_check);
