//! Host capabilities, one module each. Every capability has the same three
//! moves, in its own module: build its per-step state from the step's
//! request (`for_step`, from [`Setup`](crate::runtime::state::Setup)), link
//! its imports (`link`, once per runtime; listed in `state::link`), and
//! serve the plugin's calls (`serve`; the `slipway:plugin/host` functions
//! reach it through the WIT glue of each plugin API version, `wit/`).
//!
//! Adding a capability is a module here, a field of `StepState`, and, for
//! a host function, a line in the WIT glue: no other capability changes,
//! and the engine does not.

pub mod exec;
pub mod http;
pub mod keepalive;
pub mod log;
pub mod secret;
pub mod wasi;
