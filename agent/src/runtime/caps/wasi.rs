//! The WASI context of one step: preopened directories, env, TCP and
//! captured stdio, each only as granted. Nothing is inherited from the agent.

use crate::runtime::state::StepState;
use slipway_config::grants::{Grants, HostPattern};
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Link WASI p2 (filesystem, clocks, random, sockets, stdio...): what a
/// step reaches through it is decided per step, by [`build`].
pub(crate) fn link(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

/// The guest's stdout and stderr, kept for the step log.
pub struct Stdio {
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

/// Build the WASI context for one step from its grants.
pub fn build(grants: &Grants, max_output: usize) -> Result<(WasiCtx, Stdio), String> {
    let mut builder = WasiCtxBuilder::new();
    for dir in &grants.dirs {
        let guest = dir
            .path
            .to_str()
            .ok_or_else(|| format!("granted dir {} is not valid UTF-8", dir.path.display()))?;
        let perms = if dir.write {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(&dir.path, guest, perms)
            .map_err(|e| format!("granted dir {}: {e}", dir.path.display()))?;
    }
    builder.envs(&grants.env.iter().collect::<Vec<_>>());
    if !grants.tcp.is_empty() {
        let allowed: Arc<Vec<HostPattern>> = Arc::new(grants.tcp.clone());
        builder
            .allow_tcp(true)
            .allow_ip_name_lookup(true)
            .socket_addr_check(move |addr, usage| {
                let ok = match usage {
                    SocketAddrUse::TcpConnect => allowed.iter().any(|p| {
                        p.matches(&addr.ip().to_string(), addr.port())
                            || is_localhost_grant(p, addr)
                    }),
                    // An implicit bind before connect uses the wildcard address.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
    }
    let stdio = Stdio {
        stdout: MemoryOutputPipe::new(max_output),
        stderr: MemoryOutputPipe::new(max_output),
    };
    builder
        .stdout(stdio.stdout.clone())
        .stderr(stdio.stderr.clone());
    Ok((builder.build(), stdio))
}

/// `localhost:PORT` in a tcp grant admits the loopback addresses.
fn is_localhost_grant(pattern: &HostPattern, addr: std::net::SocketAddr) -> bool {
    addr.ip().is_loopback() && pattern.matches("localhost", addr.port())
}
