//! Write Slipway step plugins in Rust.
//!
//! A plugin is a WebAssembly component that implements one or more step kinds
//! of the `slipway:plugin` WIT package (`wit/` at the root of the repository).
//! This crate holds the generated bindings, typed params (serde), helpers for
//! the host's capabilities ([`http`], [`exec`], [`log`], [`secret`]) and the
//! [`export!`] macro that wires a type to the kinds it implements.
//!
//! It is not a runtime: it only compiles for `wasm32-wasip2` into a component
//! that the agent loads. On other targets it builds (for `cargo check` and
//! docs) but every host call panics.
//!
//! # A health check in about 20 lines
//!
//! ```no_run
//! use slipway_plugin_sdk::prelude::*;
//!
//! #[derive(Deserialize)]
//! struct Params { url: String }
//!
//! struct Ping;
//!
//! impl Plugin for Ping {
//!     const NAME: &'static str = "ping";
//!     const DESCRIPTION: &'static str = "Healthy while GET url answers 2xx.";
//!     type Params = Params;
//!     fn params_schema() -> Value {
//!         json!({ "type": "object", "required": ["url"],
//!                 "properties": { "url": { "type": "string" } } })
//!     }
//! }
//!
//! impl HealthCheck for Ping {
//!     fn check(_ctx: &StepContext, params: Params) -> HealthReport {
//!         match http::get(&params.url) {
//!             Ok(r) if r.status < 300 => HealthReport::healthy(format!("{}", r.status)),
//!             Ok(r) => HealthReport::unhealthy(format!("status {}", r.status)),
//!             Err(e) => HealthReport::unhealthy(e),
//!         }
//!     }
//! }
//!
//! slipway_plugin_sdk::export!(Ping: health_check);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the `.wasm`
//! in `target/wasm32-wasip2/release/` is the component to put in the config.

use serde::de::DeserializeOwned;

pub mod exec;
pub mod http;
pub mod log;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "all-kinds",
        pub_export_macro: true,
        default_bindings_module: "slipway_plugin_sdk::bindings",
        generate_all,
    });
}

pub use bindings::slipway::plugin::types::{
    Artifact, Event, HealthReport, HealthStatus, PluginInfo, Release, StepContext, StepKind,
};

/// The `slipway:plugin` API version this SDK builds plugins for.
pub const API_VERSION: &str = "0.1.0";

/// Names the plugin and its params; every plugin implements it once.
pub trait Plugin: 'static {
    /// Short name shown by `slipway plugins list`, e.g. "http-check".
    const NAME: &'static str;
    /// One sentence on what the plugin does.
    const DESCRIPTION: &'static str;
    /// The step params, deserialized from the config's `params` table.
    type Params: DeserializeOwned;
    /// JSON Schema of [`Plugin::Params`]; the agent validates every step's
    /// params against it when it loads the config.
    fn params_schema() -> serde_json::Value;
}

/// A `build` step: produce the release's artifact once.
pub trait Build: Plugin {
    fn build(ctx: &StepContext, params: Self::Params) -> Result<Artifact, String>;
}

/// A `deploy` step: activate a release in an environment.
pub trait Deploy: Plugin {
    fn deploy(ctx: &StepContext, params: Self::Params) -> Result<(), String>;
}

/// A `smoke-test` step: pass (with a short report) or fail a fresh release.
pub trait SmokeTest: Plugin {
    fn smoke_test(ctx: &StepContext, params: Self::Params) -> Result<String, String>;
}

/// A `health-check` step: one probe of a running release.
pub trait HealthCheck: Plugin {
    fn check(ctx: &StepContext, params: Self::Params) -> HealthReport;
}

/// A `rollback` step: return an environment to its previous release.
pub trait Rollback: Plugin {
    fn rollback(ctx: &StepContext, params: Self::Params) -> Result<(), String>;
}

/// A `notify` step: hear about every deployment state change.
pub trait Notify: Plugin {
    fn notify(event: &Event, params: Self::Params) -> Result<(), String>;
}

impl HealthReport {
    pub fn healthy(message: impl Into<String>) -> Self {
        Self::with(HealthStatus::Healthy, message)
    }
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self::with(HealthStatus::Unhealthy, message)
    }
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::with(HealthStatus::Unknown, message)
    }
    fn with(status: HealthStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The value of a secret this plugin is granted. Never log it: the agent
/// redacts secret values from logs, but not from what you send elsewhere.
pub fn secret(name: &str) -> Result<String, String> {
    bindings::slipway::plugin::host::secret(name)
}

/// Deserialize step params; the error names the plugin so a mismatch between
/// schema and type is easy to place.
#[doc(hidden)]
pub fn params<P: DeserializeOwned>(plugin: &str, json: &str) -> Result<P, String> {
    serde_json::from_str(json).map_err(|e| format!("{plugin}: invalid params: {e}"))
}

/// Everything a plugin file usually needs.
pub mod prelude {
    pub use crate::{
        Artifact, Build, Deploy, Event, HealthCheck, HealthReport, HealthStatus, Notify, Plugin,
        Rollback, SmokeTest, StepContext, exec, http, log, secret,
    };
    pub use serde::Deserialize;
    pub use serde_json::{Value, json};
}

#[doc(hidden)]
pub mod __private {
    //! Glue used by [`export!`](crate::export); not a public API.
    use super::*;
    use crate::bindings::exports::slipway::plugin as exports;
    use std::marker::PhantomData;

    pub use serde_json;

    /// Adapts a plugin type to the generated `Guest` traits.
    pub struct Adapter<T>(PhantomData<T>);

    /// Filled in by `export!` from the plugin crate's own manifest.
    pub trait Exported: Plugin {
        const VERSION: &'static str;
        const KINDS: &'static [StepKind];
    }

    impl<T: Exported> exports::plugin::Guest for Adapter<T> {
        fn describe() -> PluginInfo {
            PluginInfo {
                name: T::NAME.to_string(),
                version: T::VERSION.to_string(),
                api_version: API_VERSION.to_string(),
                kinds: T::KINDS.to_vec(),
                params_schema: T::params_schema().to_string(),
                description: T::DESCRIPTION.to_string(),
            }
        }
    }

    fn typed<T: Plugin>(ctx: &StepContext) -> Result<T::Params, String> {
        params(T::NAME, &ctx.params)
    }

    impl<T: Build> exports::build_step::Guest for Adapter<T> {
        fn build(ctx: StepContext) -> Result<Artifact, String> {
            T::build(&ctx, typed::<T>(&ctx)?)
        }
    }

    impl<T: Deploy> exports::deploy_step::Guest for Adapter<T> {
        fn deploy(ctx: StepContext) -> Result<(), String> {
            T::deploy(&ctx, typed::<T>(&ctx)?)
        }
    }

    impl<T: SmokeTest> exports::smoke_test_step::Guest for Adapter<T> {
        fn smoke_test(ctx: StepContext) -> Result<String, String> {
            T::smoke_test(&ctx, typed::<T>(&ctx)?)
        }
    }

    impl<T: HealthCheck> exports::health_check_step::Guest for Adapter<T> {
        fn check(ctx: StepContext) -> HealthReport {
            match typed::<T>(&ctx) {
                Ok(p) => T::check(&ctx, p),
                Err(e) => HealthReport::unknown(e),
            }
        }
    }

    impl<T: Rollback> exports::rollback_step::Guest for Adapter<T> {
        fn rollback(ctx: StepContext) -> Result<(), String> {
            T::rollback(&ctx, typed::<T>(&ctx)?)
        }
    }

    impl<T: Notify> exports::notify_step::Guest for Adapter<T> {
        fn notify(event: Event, params: String) -> Result<(), String> {
            T::notify(&event, crate::params(T::NAME, &params)?)
        }
    }

    macro_rules! world_section {
        ($name:ident, $file:literal) => {
            pub const $name: [u8; include_bytes!(concat!(env!("OUT_DIR"), "/", $file)).len()] =
                *include_bytes!(concat!(env!("OUT_DIR"), "/", $file));
        };
    }
    world_section!(BUILD_WORLD, "build.wit.bin");
    world_section!(DEPLOY_WORLD, "deploy.wit.bin");
    world_section!(SMOKE_TEST_WORLD, "smoke-test.wit.bin");
    world_section!(HEALTH_CHECK_WORLD, "health-check.wit.bin");
    world_section!(ROLLBACK_WORLD, "rollback.wit.bin");
    world_section!(NOTIFY_WORLD, "notify.wit.bin");
}

/// Export a plugin type for the step kinds it implements:
/// `export!(MyPlugin: health_check, smoke_test);`
///
/// Kinds: `build`, `deploy`, `smoke_test`, `health_check`, `rollback`,
/// `notify`; the type must implement the matching trait for each.
#[macro_export]
macro_rules! export {
    ($ty:ident : $($kind:ident),+ $(,)?) => {
        const _: () = {
            impl $crate::__private::Exported for $ty {
                const VERSION: &'static str = env!("CARGO_PKG_VERSION");
                const KINDS: &'static [$crate::StepKind] =
                    &[$($crate::__export_kind!(@kind $kind)),+];
            }
            #[allow(dead_code)] // used by the exports, which exist on wasm32 only
            type __SlipwayAdapter = $crate::__private::Adapter<$ty>;
            // The component's exports: only a wasm32 build has them. Their
            // names (`slipway:plugin/...`) are no symbols a host linker
            // takes, so a host build (`cargo build --workspace`, docs,
            // tests of the plugin's own logic) leaves them out.
            #[cfg(target_arch = "wasm32")]
            $crate::__export_slipway_plugin_plugin_0_1_0_cabi!(
                __SlipwayAdapter with_types_in $crate::bindings::exports::slipway::plugin::plugin
            );
            $($crate::__export_kind!($kind);)+
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_kind {
    (@kind build) => { $crate::StepKind::Build };
    (@kind deploy) => { $crate::StepKind::Deploy };
    (@kind smoke_test) => { $crate::StepKind::SmokeTest };
    (@kind health_check) => { $crate::StepKind::HealthCheck };
    (@kind rollback) => { $crate::StepKind::Rollback };
    (@kind notify) => { $crate::StepKind::Notify };
    (@kind $other:ident) => {
        compile_error!(concat!("unknown step kind `", stringify!($other),
            "`; expected build, deploy, smoke_test, health_check, rollback or notify"))
    };
    (build) => {
        $crate::__export_kind!(@glue build_step, __export_slipway_plugin_build_step_0_1_0_cabi, BUILD_WORLD, "build");
    };
    (deploy) => {
        $crate::__export_kind!(@glue deploy_step, __export_slipway_plugin_deploy_step_0_1_0_cabi, DEPLOY_WORLD, "deploy");
    };
    (smoke_test) => {
        $crate::__export_kind!(@glue smoke_test_step, __export_slipway_plugin_smoke_test_step_0_1_0_cabi, SMOKE_TEST_WORLD, "smoke-test");
    };
    (health_check) => {
        $crate::__export_kind!(@glue health_check_step, __export_slipway_plugin_health_check_step_0_1_0_cabi, HEALTH_CHECK_WORLD, "health-check");
    };
    (rollback) => {
        $crate::__export_kind!(@glue rollback_step, __export_slipway_plugin_rollback_step_0_1_0_cabi, ROLLBACK_WORLD, "rollback");
    };
    (notify) => {
        $crate::__export_kind!(@glue notify_step, __export_slipway_plugin_notify_step_0_1_0_cabi, NOTIFY_WORLD, "notify");
    };
    ($other:ident) => {};
    (@glue $iface:ident, $cabi:ident, $world:ident, $name:literal) => { const _: () = {
        #[cfg(target_arch = "wasm32")]
        $crate::$cabi!(
            __SlipwayAdapter with_types_in $crate::bindings::exports::slipway::plugin::$iface
        );
        // The world this kind belongs to, merged with the others by
        // wit-component when the component is made.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = concat!("component-type:slipway-plugin:", $name))]
        #[used]
        static WORLD: [u8; $crate::__private::$world.len()] = $crate::__private::$world;
    }; };
}
