//! Per-step resource limits: what a plugin step may consume before it is
//! stopped. A plugin that loops, balloons or floods fails its own step; the
//! agent and every other step keep running.

use std::time::Duration;
use wasmtime::ResourceLimiter;

/// Limits for one step. The defaults suit checks and deploy hooks; builds
/// usually raise `wall_time` in config.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Wall time for the whole step, host calls (exec, http) included.
    pub wall_time: Duration,
    /// Linear memory the plugin may grow to, in bytes.
    pub memory_bytes: usize,
    /// Bytes kept from any string the plugin returns (report, error,
    /// message); the rest is cut with a marker.
    pub max_output_bytes: usize,
    /// Bytes of log lines kept per step; later lines are dropped and counted.
    pub max_log_bytes: usize,
    /// Bytes of stdout and of stderr kept per `exec` call (the tail).
    pub max_exec_output_bytes: usize,
    /// Host resources (open files and directories, streams, HTTP requests
    /// and responses, pollables) a plugin may hold at once. Each lives in
    /// the agent's memory, which `memory_bytes` does not count.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall_time: Duration::from_secs(30),
            memory_bytes: 128 * 1024 * 1024,
            max_output_bytes: 64 * 1024,
            max_log_bytes: 256 * 1024,
            max_exec_output_bytes: 1024 * 1024,
            max_resources: 10_000,
        }
    }
}

/// The largest memory limit a step may ask for (checked by the config).
pub use slipway_config::plugin::MAX_MEMORY_BYTES;

/// Cut `text` to at most `max` bytes (on a char boundary), saying how much
/// was dropped.
pub fn truncate(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… [truncated {} bytes]", &text[..cut], text.len() - cut)
}

/// Memory and table limits of one step, as the store's `ResourceLimiter`.
/// Records which limit was hit, so the step error can say "memory limit"
/// rather than a bare trap.
pub(crate) struct Limiter {
    pub memory_bytes: usize,
    pub table_elements: usize,
    pub hit: Option<String>,
}

/// Table elements a step may grow to (the pool's per-table maximum).
pub(crate) const TABLE_ELEMENTS: usize = 200_000;

impl Limiter {
    /// The step's memory limit and the pool's table maximum.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: TABLE_ELEMENTS,
            hit: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            let msg = format!(
                "memory limit exceeded: the plugin tried to grow its memory from {} to {} MiB; the limit is {} MiB",
                current >> 20,
                desired >> 20,
                self.memory_bytes >> 20
            );
            self.hit = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            let msg = format!(
                "table limit exceeded: {desired} elements (limit {})",
                self.table_elements
            );
            self.hit = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("ééé".into(), 3), "é… [truncated 4 bytes]");
    }
}
