//! Slipway: a deploy agent whose steps are sandboxed WebAssembly component
//! plugins. The library holds everything; `main.rs` only parses arguments.

pub mod agent;
pub mod cli;
pub mod config;
pub mod engine;
pub mod runtime;
pub mod store;
pub mod supervisor;
pub mod watch;
