//! Test fixture: a health check that does (almost) nothing, to measure the
//! bare cost of a plugin step, and to tell a warm instance from a fresh one.

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

/// Calls this instance has served: 1 in a fresh instance, counting up in
/// a warm one. `{"panic": true}` traps instead.
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl HealthCheck for Noop {
    fn check(_ctx: &StepContext, params: Value) -> HealthReport {
        if params["panic"] == true {
            panic!("asked to panic");
        }
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        HealthReport::healthy(format!("call {n}"))
    }
}

slipway_plugin_sdk::export!(Noop: health_check);
