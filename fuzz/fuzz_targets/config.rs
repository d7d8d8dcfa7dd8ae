//! Config text → parse and every check that needs no plugin. Whatever the
//! bytes, the parser must not panic, every error must point inside the text
//! with a message, and an accepted config must hold the invariants the
//! engine relies on.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_config::plugin::{BUILTINS, PluginSource};
use slipway_config::{Config, ConfigError, Promote};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A config file in a directory with an `app/`, so seeds whose source is
/// `{ path = "app" }` (or `"."`) pass the directory check.
fn file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join("slipway-fuzz-config");
        std::fs::create_dir_all(dir.join("app")).expect("create the fuzz app dir");
        dir.join("slipway.toml")
    })
}

/// `line:col` is a position in `text` (1-based; the column may be one past
/// the end of its line, where a missing key or value is reported).
fn check_location(text: &str, what: &str, line: usize, col: usize) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "{what} at line {line}, but the text has {} lines",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        col >= 1 && col <= width + 1,
        "{what} at {line}:{col}, but line {line} has {width} characters"
    );
}

fn check_error(text: &str, e: &ConfigError) {
    assert_eq!(e.file, file(), "an error names another file: {e}");
    assert!(
        !e.message.trim().is_empty(),
        "an error without a message: {e}"
    );
    check_location(text, "error", e.line, e.col);
}

fn check_accepted(config: &Config) {
    for (name, plugin) in &config.plugins {
        assert_eq!(&plugin.name, name);
        if let PluginSource::Builtin(b) = &plugin.source {
            assert!(
                BUILTINS.contains(&b.as_str()),
                "unknown builtin `{b}` accepted"
            );
        }
        if let Some(sha) = &plugin.sha256 {
            assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
    for (name, app) in &config.apps {
        assert_eq!(&app.name, name);
        assert!(app.keep_releases >= 1);
        assert!(
            !app.environments.is_empty(),
            "[apps.{name}] accepted without an environment"
        );
        for (i, env) in app.environments.iter().enumerate() {
            if let Some(from) = &env.promote_from {
                assert!(
                    app.environments[..i].iter().any(|e| &e.name == from),
                    "[apps.{name}.environments.{}] comes before `{from}` it promotes from",
                    env.name
                );
            }
            if let Some(h) = &env.health {
                assert!(h.healthy_after >= 1 && h.unhealthy_after >= 1);
                assert!(!h.interval.is_zero());
                assert!(h.bake >= h.interval * h.healthy_after);
            }
            if env.approval_timeout.is_some() {
                assert_eq!(env.promote, Promote::Manual);
            }
        }
        // What the journal records: canonical, valid JSON, and stable.
        let spec = app.spec_json();
        let value: serde_json::Value = serde_json::from_str(&spec).expect("spec is JSON");
        assert_eq!(serde_json::to_string(&value).unwrap().len(), spec.len());
        let hash = app.spec_hash();
        assert!(hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (config, errors) = slipway_config::parse_partial(file(), text);
    for e in &errors {
        check_error(text, e);
    }
    assert!(
        errors.is_sorted_by_key(|e| (e.line, e.col)),
        "errors are not in file order"
    );
    if let Some(config) = &config {
        for w in &config.warnings {
            assert!(!w.message.trim().is_empty());
            check_location(text, "warning", w.line, w.col);
        }
    }
    match (config, errors.is_empty()) {
        (Some(config), true) => {
            check_accepted(&config);
            // Parsing is a function of the text: the same text, the same spec.
            let again = Config::parse(file(), text).expect("accepted once, accepted again");
            for (name, app) in &config.apps {
                assert_eq!(app.spec_hash(), again.apps[name].spec_hash());
            }
        }
        (None, true) => panic!("no config and no error"),
        (_, false) => assert!(Config::parse(file(), text).is_err()),
    }
});
