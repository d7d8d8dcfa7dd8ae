//! First-party plugins compiled into the agent binary, so `source =
//! "builtin:NAME"` needs no files on the server. `agent/build.rs` builds them
//! from `plugins/` for `wasm32-wasip2`.

macro_rules! builtin {
    ($file:literal) => {
        include_bytes!(concat!(env!("SLIPWAY_WASM_DIR"), "/", $file))
    };
}

static BUILTINS: &[(&str, &[u8])] = &[
    ("command", builtin!("slipway_plugin_command.wasm")),
    ("http-check", builtin!("slipway_plugin_http_check.wasm")),
    ("tcp-check", builtin!("slipway_plugin_tcp_check.wasm")),
    ("webhook", builtin!("slipway_plugin_webhook.wasm")),
];

/// The component bytes of a builtin plugin.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Names of all builtin plugins.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// Where the build put every component it compiled, test fixtures included.
/// Only meaningful on the machine that built this binary (tests, benches).
#[doc(hidden)]
pub const BUILD_DIR: &str = env!("SLIPWAY_WASM_DIR");

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_knows_every_builtin_by_name() {
        assert_eq!(super::names(), slipway_config::plugin::BUILTINS);
    }
}
