//! The example plugins in Python and JavaScript (`examples/plugins/`), built
//! by their own `build.sh` with the pinned toolchains, which the scripts
//! install into `target/toolchains` on first use. The scripts hold a file
//! lock and skip a build whose inputs are unchanged, so every test and
//! bench can simply ask for the component.

use slipway::runtime::builtin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `examples/plugins/python-smoke` (componentize-py), built.
pub fn python_smoke() -> PathBuf {
    build("python-smoke")
}

/// `examples/plugins/js-health` (componentize-js), built.
pub fn js_health() -> PathBuf {
    build("js-health")
}

/// `examples/plugins/rust-health`, which `agent/build.rs` builds.
pub fn rust_health() -> PathBuf {
    super::wasm("slipway_example_rust_health")
}

/// Run `examples/plugins/NAME/build.sh` into `target/wasm-plugins/examples`.
fn build(name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // BUILD_DIR is <target>/wasm-plugins/wasm32-wasip2/plugin.
    let target = Path::new(builtin::BUILD_DIR).ancestors().nth(3).unwrap();
    let out = target.join(format!("wasm-plugins/examples/{name}.wasm"));
    let script = repo.join(format!("examples/plugins/{name}/build.sh"));
    let result = Command::new("sh")
        .arg(&script)
        .arg(&out)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        result.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}
