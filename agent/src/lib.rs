//! Slipway: a deploy agent whose steps are sandboxed WebAssembly component
//! plugins. The library holds everything; `main.rs` only parses arguments.

pub mod agent;
pub mod api;
pub mod artifact;
pub mod authoring;
pub mod backup;
pub mod cli;
pub mod client;
pub mod config;
pub mod datetime;
pub mod engine;
pub mod fault;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod runtime;
pub mod store;
pub mod supervisor;
pub mod traffic;
pub mod vocab;
pub mod watch;
