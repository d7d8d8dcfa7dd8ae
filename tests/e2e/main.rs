//! The end-to-end tests: the real `slipway` binary, real plugins built from
//! this repository, real app processes on loopback ports. One test binary
//! with a module per area (with a binary per area, each waited for its
//! slowest test before the next could start); run one area with
//! `cargo test -p slipway --test e2e AREA::`, e.g. `crash::`.

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod api;
mod artifact;
mod authoring;
mod backup;
mod cli;
mod crash;
mod fuzz;
mod hostile;
mod languages;
mod model;
mod notify;
mod runtime;
mod secrets;
mod traffic;
