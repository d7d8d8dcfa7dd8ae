//! Host capabilities, one module each. Every capability has the same three
//! moves: read its part of the grants, build per-step state, and serve the
//! plugin's calls (linked once into the shared `Linker` by the runtime).
//! Adding a capability touches no other capability and not the engine.

pub mod exec;
pub mod http;
pub mod keepalive;
pub mod log;
pub mod secret;
pub mod wasi;
