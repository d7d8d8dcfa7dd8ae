//! Builds the WebAssembly plugins (first-party plugins, examples and test
//! fixtures) for `wasm32-wasip2`, so `cargo build` / `cargo test` on a fresh
//! machine need no manual step. The first-party ones are embedded in the
//! binary (`runtime::builtin`).
//!
//! It runs a nested cargo with its own target dir under the outer one
//! (`target/wasm-plugins`), so the two builds never wait on each other's lock.
//! If the `wasm32-wasip2` target is missing it is added with rustup.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every crate compiled to a component, by package name.
const WASM_PACKAGES: &[&str] = &[
    "slipway-plugin-command",
    "slipway-plugin-http-check",
    "slipway-plugin-tcp-check",
    "slipway-plugin-webhook",
    "slipway-example-rust-health",
    "slipway-fixture-hostile",
    "slipway-fixture-noop",
    "slipway-fixture-api-next",
    "slipway-fixture-api-patch",
    "slipway-fixture-scripted",
];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for watched in [
        "wit",
        "plugin-sdk",
        "plugins",
        "tests/plugins",
        // Only the Rust example: the Python and JS ones have their own
        // build scripts, and editing them must not rebuild the agent.
        "examples/plugins/rust-health",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.ancestors().nth(4).unwrap().join("wasm-plugins");

    ensure_target(&root);

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    for package in WASM_PACKAGES {
        cmd.args(["-p", package]);
    }
    // Host-only settings must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the wasm plugins");
    if !status.success() {
        panic!("building the wasm plugins failed ({status}); see the cargo output above");
    }
    let wasm_dir = target_dir.join(TARGET).join("plugin");
    println!("cargo:rustc-env=SLIPWAY_WASM_DIR={}", wasm_dir.display());
}

/// Add the wasm target to the toolchain in use if it is not there yet.
fn ensure_target(root: &Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return;
    }
    println!("cargo:warning=adding the {TARGET} target with rustup (one time)");
    let status = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", TARGET])
        .status()
        .expect("running rustup to add the wasm32-wasip2 target");
    assert!(status.success(), "`rustup target add {TARGET}` failed");
}
