//! Plugin authoring: what a person writing a plugin runs on their own
//! machine, not what the agent runs on a server.
//!
//! - [`skeleton`]: `slipway plugin new` writes a working plugin (Rust,
//!   Python or JavaScript) for one step kind, with its build script, so a new
//!   plugin starts from something that builds and passes `plugins inspect`.
//! - [`local_step`]: `slipway plugin test` runs one step of a plugin through
//!   the real runtime, with the grants given on the command line, and shows
//!   its logs and result, so an author can iterate without a deployment.
//!
//! Neither touches a config, a journal or a state dir.

pub mod local_step;
pub mod skeleton;
