//! Figures of the benches in a form `scripts/benchmarks` assembles into
//! `BENCHMARKS.md`, so no number there is copied by hand.
//!
//! Every bench prints its figures for a person; [`record`] also appends each
//! one as a JSON line to the file named by `SLIPWAY_BENCH_OUT`, when set.
//! The report (`benches/report.rs`) lays them out in the order recorded.

use std::io::Write;

/// Append one figure of `bench` (`steps`, `deploy`, `load`...): its stable
/// `key`, its value and unit, and what it is, in words, for the report.
pub fn record(bench: &str, key: &str, value: f64, unit: &str, what: &str) {
    let Some(path) = std::env::var_os("SLIPWAY_BENCH_OUT") else {
        return;
    };
    let line = serde_json::json!({
        "bench": bench, "key": key, "value": value, "unit": unit, "what": what,
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("SLIPWAY_BENCH_OUT {}: {e}", path.display()));
    writeln!(file, "{line}").expect("writing a bench result");
}

/// The machine's 1-minute load average, recorded with a bench's figures
/// so a reader can tell whether they came from a busy machine.
pub fn record_machine_load(bench: &str) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    record(
        bench,
        "loadavg_1m",
        load,
        "",
        "machine load average (1 min) when this bench ended",
    );
}

/// Resident memory of a process, MB (`VmRSS`).
#[allow(dead_code)] // not every bench measures memory
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}
