//! The WIT glue: what ties the `slipway:plugin` interfaces to the host, one
//! module per plugin API version. `v0_1` is `wit/` as it is today
//! (`slipway:plugin@0.1.x`): its bindings, the conversions between its
//! records and the host's types, the export indices of the step kinds a
//! component implements, and the `slipway:plugin/host` functions served
//! from the capabilities.
//!
//! A new API version (`slipway:plugin@0.2`) is a new file beside `v0_1`
//! with the same four parts; `Exports` then becomes an enum over the
//! versions, chosen at load by the version the component names
//! (`version::component_api`), and the rest of the runtime keeps calling
//! [`Exports::describe`] and [`Exports::call`]. `docs/plugin-api-versions.md`
//! says when a version is new and what stays supported.

mod v0_1;

pub(crate) use v0_1::{Exports, link};

use super::StepKind;

/// What a plugin's `describe()` returned, in the host's words (checked by
/// `PluginInfo::check` afterwards).
pub(crate) struct Described {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub kinds: Vec<StepKind>,
    pub params_schema: String,
    pub description: String,
}
