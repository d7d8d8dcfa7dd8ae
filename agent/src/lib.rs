//! Slipway: a deploy agent whose steps are sandboxed WebAssembly component
//! plugins. The library holds everything; `main.rs` only parses arguments.

pub mod cli;
pub mod runtime;
pub mod store;
pub mod supervisor;
