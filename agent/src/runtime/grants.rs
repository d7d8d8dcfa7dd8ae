//! What a plugin may touch, as written in its config `grants` table. The
//! types live with the config model in `slipway-config`
//! ([`slipway_config::grants`]); this path keeps working for the runtime.

pub use slipway_config::grants::*;
