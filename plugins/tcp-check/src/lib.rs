//! `tcp-check`: healthy while a TCP port accepts connections. For services
//! that speak no HTTP (databases, queues). Needs a `tcp` grant for the address.

use slipway_plugin_sdk::prelude::*;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// "host:port", e.g. "127.0.0.1:5432".
    address: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
}

fn default_timeout_ms() -> u32 {
    2000
}

struct TcpCheck;

impl Plugin for TcpCheck {
    const NAME: &'static str = "tcp-check";
    const DESCRIPTION: &'static str = "Checks that a TCP port accepts connections.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["address"],
            "properties": {
                "address": { "type": "string", "pattern": "^.+:[0-9]{1,5}$", "description": "host:port" },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 2000 }
            }
        })
    }
}

fn connect(p: &Params) -> Result<String, String> {
    let timeout = Duration::from_millis(p.timeout_ms.into());
    let addrs = p
        .address
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", p.address))?;
    let mut last = format!("{}: no address", p.address);
    for addr in addrs {
        // `connect_timeout` on wasip2 reports success before the handshake
        // finishes; asking for the peer address waits for the real answer.
        match TcpStream::connect_timeout(&addr, timeout).and_then(|s| s.peer_addr()) {
            Ok(_) => return Ok(format!("{addr} accepts connections")),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

impl HealthCheck for TcpCheck {
    fn check(_ctx: &StepContext, p: Params) -> HealthReport {
        match connect(&p) {
            Ok(m) => HealthReport::healthy(m),
            Err(e) => HealthReport::unhealthy(e),
        }
    }
}

impl SmokeTest for TcpCheck {
    fn smoke_test(_ctx: &StepContext, p: Params) -> Result<String, String> {
        connect(&p)
    }
}

slipway_plugin_sdk::export!(TcpCheck: health_check, smoke_test);
