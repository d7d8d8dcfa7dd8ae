//! Writes `BENCHMARKS.md` from the figures the other benches recorded.
//!
//! Not a measurement: `scripts/benchmarks` runs the `steps`, `deploy` and
//! `load` benches with `SLIPWAY_BENCH_OUT` set (each appends its figures as
//! JSON lines, see `common/mod.rs`), then this, which adds the machine and
//! the method and lays the figures out in the order they were recorded.
//! Run alone (`cargo bench` of every target) without `SLIPWAY_BENCH_OUT`,
//! it does nothing.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// One recorded figure.
struct Figure {
    bench: String,
    key: String,
    value: f64,
    unit: String,
    what: String,
}

const SECTIONS: &[(&str, &str, &str)] = &[
    (
        "steps",
        "Plugin steps vs shell hooks, compile vs cache",
        "`agent/benches/steps.rs`: the runtime in-process, no agent. Each pair is measured \
         side by side in one run, in alternating rounds (5 rounds; 2000 plugin steps and 300 \
         shell spawns per round for the no-op, 400 vs 100 for HTTP), so noise hits both \
         sides alike; medians. A no-op health-check plugin (fresh instance from the \
         pre-instantiated component, and a warm instance) against `sh -c 'exit 0'` spawned \
         with `std::process::Command`; the builtin `http-check` against `curl -fsS` on the same \
         loopback server; compiling the largest builtin plugin against loading it from the \
         compile cache (mmap).",
    ),
    (
        "deploy",
        "Config edit to deployment",
        "`agent/benches/deploy.rs`: the real `slipway agent` on a copy of the quickstart \
         (build with `rustc`, staging then production, smoke and 2 health checks each at \
         100 ms), the version edited 10 times the way an editor saves (write + rename); \
         figures from the journal's timestamps, medians. Agent overhead = whole deployment \
         − time inside the build step − the health-check intervals waited.",
    ),
    (
        "load",
        "One agent guarding many apps",
        "`agent/benches/load.rs`: the real `slipway agent`. Idle: 3 apps × 2 environments \
         deployed, health every 2 s, nothing else happening. Load: 200 apps × 2 environments \
         (staging → production), every environment health-checked every second by the \
         builtin `http-check` against real loopback HTTP servers (the bench serves them: one \
         port per app, one path per environment, HTTP/1.1 keep-alive as app servers do; \
         environments are activated by a `deploy` step running `true` instead of 400 app \
         processes, so the machine is not what is measured). Apps are added 25 at a time by config edits; measuring starts once all \
         are deployed and under the health guard. CPU from `/proc/PID/stat` (utime + stime) \
         over the window, as % of one core; RSS from `VmRSS` every second. Check latency \
         is the health-check step duration from the agent's \
         `slipway_step_duration_seconds` histogram (between two scrapes, interpolated \
         within buckets like `histogram_quantile`). Checks expected = environments × \
         seconds / interval; an environment whose checks received + said skipped \
         (`slipway_health_checks_skipped_total`) differ from that by more than the phase \
         (±1.5) is counted as skipped silently.",
    ),
    (
        "proxy",
        "The traffic layer beside nginx",
        "`agent/benches/proxy.rs` (needs `nginx-light` and `wrk`): on loopback, the proxy \
         under test pinned to core 0 (`slipway proxy` on one thread, or nginx with one \
         worker, upstream keep-alive 128, the same `X-Forwarded-*` headers), the app (a \
         one-thread hyper server) and the load generator on core 1. wrk -t1 -c50 closed \
         loops, keep-alive and a new connection per request; a fixed 2,000 requests/s over \
         16 keep-alive connections, latency from when each request was due; 3 interleaved \
         rounds per target, medians. The switch: a route change through the control socket \
         until a new connection is answered by the other release, 20 times. RSS from \
         `VmRSS`, idle and with 1,000 keep-alive client connections open.",
    ),
];

/// What profiling the load test showed (perf, `/proc/PID/smaps`); words
/// only, the figures above are the run's.
const NOTES: &str = "## Where the load goes (profiled, issue 6)

- Where a check's CPU goes (perf on the agent under this load): the kernel's \
  loopback send of the request (about a tenth: it runs the server side's TCP \
  receive too), sleeping and waking between checks (about a tenth), malloc \
  and free (about a tenth), then wasmtime's component calls, hyper and the \
  guard's own work in thin slices.
- What got the load from 22.6% to 7-11% of a core (the same code reads up to 3 points apart in runs hours apart; `SLIPWAY_LOAD_COMPARE` compares two builds side by side): plain-HTTP GETs from \
  plugins reuse kept-alive connections (connect + close per check had been a \
  quarter of the CPU); a connection has no task of its own (the request and \
  its body drive it); all guarded environments' checks run on one thread \
  (`slipway-checks`), so a check's wake-ups do not cross cores; every \
  guarded environment is warm; the check's request is made once per release \
  and the journal re-read only after it changed; the release dir is looked \
  for every 5 s instead of every check.
- RSS was growing by ~2.5 MB a minute: wasmtime-wasi-http 48 never dropped \
  the `request-options` a guest hands to `outgoing-handler.handle`, one \
  resource-table entry per request in each warm instance. Slipway serves that \
  function itself and drops them; host resources per step are now limited \
  (10,000).
- Fixed by the load test: steps failed with \"maximum concurrent limit of 256 \
  for component instances\" when 200 apps deployed (they now wait for a slot; \
  warm instances hold at most half); every routine check logged a line (now \
  debug) and prepared two SQL statements (now one, cached); checks drifted by \
  their own duration (now due on a fixed schedule, spread over the interval by \
  app and environment, and any not made is counted in \
  `slipway_health_checks_skipped_total`); glibc kept a malloc arena per \
  thread (now 2).
- RSS (from `/proc/PID/smaps` under this load): the binary's code, 20-27 MB \
  (file-backed; the dev profile); the compiled http-check plugin, about 15 MB \
  (mapped once per warm instance: the same page-cache pages counted 400 \
  times, far less in PSS); the heap and the instances' memory, about 50 MB. \
  Plugins compile in a child process (`slipway compile-component`): \
  compiling in the agent left the compiler's code and heap resident for good \
  (7.5 MB more, side by side with `SLIPWAY_LOAD_COMPARE_COLD`).
- Deploying 200 apps in one config edit on 2 cores starves the first bake \
  checks (loopback GETs over 2 s, failing deployments); the bench adds apps 25 \
  at a time.

## What the traffic layer's figures say (issue 14)

- The fixed-rate figures are dominated by the load generator and the app \
  sharing one core (the app straight takes about 1 ms at p50 for a loopback \
  request); differences between targets of tens of µs, negative too, are \
  below the run-to-run noise. They show the proxy adds no queueing at 2,000 \
  requests/s, not that it adds under 50 µs; a third core for the load \
  generator would.
- Memory: a fresh proxy has about 10.7 MB RSS, 7.3 MB of it file-backed \
  (pages of the agent's 94 MB binary, wasmtime included) and 1.7 MB \
  anonymous. 1,000 connections cost about 12 KB each: hyper's \
  per-connection buffers (8 KB initial read buffer). nginx's worker keeps its \
  buffers per request, not per idle connection.
- Keep-alive throughput moved between 0.64 (tokio's multi-thread runtime, two \
  workers sharing the proxy's one core) and 0.74-0.81 × nginx (one thread) \
  over runs; nginx's own throughput varies by ±15%. Per request the proxy picks \
  a release, rewrites headers, counts RED figures and goes through \
  hyper-util's pooled client (a mutex per checkout). Not profiled yet.

";

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    format!(
        "| | |\n| --- | --- |\n| CPU | {model}, {cores} cores available |\n| memory | {mem_gb:.1} GB |\n| kernel | Linux {} |\n| rustc | {} |\n| date | {} |\n",
        read("/proc/sys/kernel/osrelease").trim(),
        output("rustc", &["-V"]),
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

fn value(f: &Figure) -> String {
    if f.unit == "met" {
        return if f.value >= 1.0 { "met" } else { "**NOT met**" }.into();
    }
    if f.value.is_nan() {
        return "n/a".into();
    }
    let a = f.value.abs();
    let number = if a >= 100.0 || f.value.fract() == 0.0 {
        format!("{:.0}", f.value)
    } else if a >= 10.0 {
        format!("{:.1}", f.value)
    } else {
        format!("{:.2}", f.value)
    };
    match f.unit.as_str() {
        "" => number,
        "×" => format!("{number}×"),
        unit => format!("{number} {unit}"),
    }
}

fn main() {
    let Some(results) = std::env::var_os("SLIPWAY_BENCH_OUT") else {
        println!("report: SLIPWAY_BENCH_OUT not set, nothing to report (see scripts/benchmarks)");
        return;
    };
    let text = std::fs::read_to_string(&results)
        .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&results).display()));
    let figures: Vec<Figure> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Figure {
                bench: s("bench"),
                key: s("key"),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
                unit: s("unit"),
                what: s("what"),
            }
        })
        .collect();

    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `scripts/benchmarks` (about 15 minutes; it builds in the dev profile, \
         runs `cargo bench -p slipway --profile dev --bench steps --bench deploy --bench load` \
         and writes this file from the figures they record). Do not edit by hand: rerun it. \
         Shorter runs for development: `SLIPWAY_LOAD_SECS=60 SLIPWAY_IDLE_SECS=10 \
         scripts/benchmarks`. Every figure of a run comes from the same machine in the same \
         run; ratios are measured side by side.\n\n",
    );
    md.push_str("## Machine\n\n");
    md.push_str(&machine());
    let loads: Vec<String> = figures
        .iter()
        .filter(|f| f.key == "loadavg_1m")
        .map(|f| format!("{:.2} after `{}`", f.value, f.bench))
        .collect();
    if !loads.is_empty() {
        let _ = writeln!(
            md,
            "| load average (1 min) | {} (the bench's own work included; much higher means other work shared the machine and the figures are noisier) |",
            loads.join(", ")
        );
    }
    md.push('\n');

    if let Some(goal) = summary(&figures) {
        md.push_str(&goal);
    }

    for (bench, title, method) in SECTIONS {
        let rows: Vec<&Figure> = figures
            .iter()
            .filter(|f| f.bench == *bench && f.key != "loadavg_1m")
            .collect();
        let _ = writeln!(md, "## {title}\n\n{method}\n");
        if rows.is_empty() {
            md.push_str("Not run.\n\n");
            continue;
        }
        md.push_str("| figure | value |\n| --- | ---: |\n");
        for f in rows {
            let _ = writeln!(md, "| {} | {} |", f.what, value(f));
        }
        md.push('\n');
    }
    md.push_str(NOTES);
    let out = std::env::var("SLIPWAY_BENCH_REPORT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("BENCHMARKS.md")
            .display()
            .to_string()
    });
    std::fs::write(&out, md).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("report: wrote {out} ({} figures)", figures.len());
}

/// The goal for the load test, first, in one table.
fn summary(figures: &[Figure]) -> Option<String> {
    let get = |key: &str| figures.iter().find(|f| f.bench == "load" && f.key == key);
    let (cpu, rss) = (get("load_cpu_percent")?, get("load_rss_max_mb")?);
    let mut s = String::from(
        "## Load goal: 200 apps × 2 environments, health every second\n\n| goal | measured | |\n| --- | ---: | --- |\n",
    );
    let row = |s: &mut String, goal: &str, f: &Figure, verdict: Option<&Figure>| {
        let v = verdict.map_or(String::new(), value);
        let _ = writeln!(s, "| {goal} | {} | {v} |", value(f));
    };
    row(
        &mut s,
        "agent CPU under 10% of one core",
        cpu,
        get("goal_cpu"),
    );
    row(&mut s, "agent RSS under 100 MB (max)", rss, get("goal_rss"));
    if let (Some(p50), Some(p99)) = (get("load_check_p50_ms"), get("load_check_p99_ms")) {
        let _ = writeln!(
            s,
            "| health-check latency p50 / p99 | {} / {} | |",
            value(p50),
            value(p99)
        );
    }
    if let (Some(e), Some(r), Some(k), Some(u)) = (
        get("load_checks_expected"),
        get("load_checks_served"),
        get("load_checks_skipped"),
        get("load_unexplained_envs"),
    ) {
        let verdict = get("goal_checks").map_or(String::new(), value);
        let _ = writeln!(
            s,
            "| no check skipped silently | {} expected, {} made, {} said skipped, {} environments short | {verdict} |",
            value(e),
            value(r),
            value(k),
            value(u)
        );
    }
    s.push('\n');
    Some(s)
}
