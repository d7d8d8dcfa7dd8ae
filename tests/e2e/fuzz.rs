//! The fuzz targets of `fuzz/`, run for a bounded time on every
//! `cargo test --workspace`: config text and plugin `describe()` output must
//! never panic the parser, and every rejection must be a located error.
//!
//! Built with plain `cargo build` and the flags `cargo fuzz` would pass (no
//! cargo-fuzz install, works on stable), into `target/fuzz` so the main
//! build's artifacts are never touched. Each run starts from the committed
//! corpus (`fuzz/corpus/TARGET`, read only) and writes what it finds to a
//! temporary directory, so the repo stays clean. A crash fails the test with
//! the input kept under `target/fuzz/crashes/`. See docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The flags `cargo fuzz build -s none` passes (cargo-fuzz 0.13,
/// `src/project.rs`): libFuzzer's coverage instrumentation, `cfg(fuzzing)`,
/// and debug assertions (so overflow checks) on.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
    "-Clink-dead-code",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cdebug-assertions",
    "-Ccodegen-units=1",
];

const TARGETS: &[&str] = &["config", "describe"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent is in the workspace")
        .to_path_buf()
}

/// How long each target runs: `SLIPWAY_FUZZ_SECONDS`, 60 by default. The
/// targets run side by side, so the test takes about this long plus the
/// build.
fn seconds() -> u64 {
    match std::env::var("SLIPWAY_FUZZ_SECONDS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SLIPWAY_FUZZ_SECONDS={s} is not a number of seconds")),
        Err(_) => 60,
    }
}

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// Build every target; returns the directory of the binaries.
fn build() -> PathBuf {
    let root = root();
    let target_dir = root.join("target/fuzz");
    let triple = host_triple();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root.join("fuzz"))
        .args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "--target",
            &triple,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        // Set by an outer cargo; it would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .expect("run cargo build for fuzz/");
    assert!(
        out.status.success(),
        "building the fuzz targets failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join(triple).join("release")
}

/// Run one target for `seconds`; Err with what to look at if it crashed.
fn run(bin: &Path, target: &str, seconds: u64) -> Result<String, String> {
    let root = root();
    let corpus = root.join("fuzz/corpus").join(target);
    let seeds = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .count();
    let work = tempfile::tempdir().expect("temp dir");
    let found = work.path().join("corpus");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&found).unwrap();
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut cmd = Command::new(bin.join(target));
    // New inputs go to the first directory only; the committed corpus is read.
    cmd.arg(&found)
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=20")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = root.join("fuzz").join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let out = cmd.output().expect("run the fuzz target");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let tail = |log: &str| {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    if !out.status.success() {
        let kept = root.join("target/fuzz/crashes");
        std::fs::create_dir_all(&kept).unwrap();
        let mut inputs = Vec::new();
        for entry in std::fs::read_dir(&artifacts).unwrap().flatten() {
            let to = kept.join(format!("{target}-{}", entry.file_name().to_string_lossy()));
            std::fs::copy(entry.path(), &to).unwrap();
            inputs.push(to.display().to_string());
        }
        return Err(format!(
            "fuzz target `{target}` failed ({}); input kept at {}; reproduce with `{} {}`\n{}",
            out.status,
            inputs.join(", "),
            bin.join(target).display(),
            inputs.first().map_or("", String::as_str),
            tail(&log)
        ));
    }
    // A run that loaded nothing or ran nothing proves nothing.
    let loaded = format!("seed corpus: files: {seeds} ");
    let runs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units: "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if !log.contains(&loaded) || runs < seeds as u64 {
        return Err(format!(
            "fuzz target `{target}` did not run its {seeds} seeds (ran {runs} inputs):\n{}",
            tail(&log)
        ));
    }
    Ok(format!(
        "{target}: {runs} inputs in {seconds} s from {seeds} seeds"
    ))
}

#[test]
fn fuzz_targets_find_no_crash_in_their_time() {
    let seconds = seconds();
    let before = corpus_files();
    let bin = build();
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let runs: Vec<_> = TARGETS
            .iter()
            .map(|t| s.spawn(|| run(&bin, t, seconds)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(summary) => eprintln!("{summary}"),
            Err(e) => failed.push(e),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    assert_eq!(corpus_files(), before, "the run wrote into fuzz/corpus");
}

/// Every file of the committed corpora, to check that a run leaves them be.
fn corpus_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = TARGETS
        .iter()
        .flat_map(|t| std::fs::read_dir(root().join("fuzz/corpus").join(t)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}
