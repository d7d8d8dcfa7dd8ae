//! The real `slipway` binary: plugin listing and inspection.

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;

fn slipway(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("running slipway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugins_list_shows_the_builtins() {
    let (code, out, err) = slipway(&["plugins", "list"]);
    assert_eq!(code, 0, "{err}");
    for line in ["command ", "http-check ", "tcp-check "] {
        assert!(out.contains(line), "{out}");
    }
    let (code, out, _) = slipway(&["plugins", "list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let http = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http-check")
        .unwrap();
    assert_eq!(
        http["kinds"],
        serde_json::json!(["health-check", "smoke-test"])
    );
    assert_eq!(http["api_compatible"], true);
}

#[test]
fn plugins_inspect_describes_a_builtin_and_a_file() {
    let (code, out, err) = slipway(&["plugins", "inspect", "http-check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api:     0.1.0 (compatible"), "{out}");
    assert!(out.contains("\"url\""), "the params schema is shown: {out}");

    let noop = support::fixture("noop");
    let (code, out, err) = slipway(&["plugins", "inspect", noop.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["name"], "noop");
    assert_eq!(info["kinds"], serde_json::json!(["health-check"]));
}

#[test]
fn plugins_inspect_refuses_an_incompatible_plugin() {
    let next = support::fixture("api-next");
    let (code, _, err) = slipway(&["plugins", "inspect", next.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("built for plugin API 0.2.0") && err.contains("supports 0.1.0"),
        "{err}"
    );
    let (code, _, err) = slipway(&["plugins", "inspect", "no-such-plugin"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown builtin plugin"), "{err}");
}
