//! The real `slipway` binary: plugin listing and inspection.

use crate::support;

use support::slipway;

use std::process::Command;

#[test]
fn plugins_list_shows_the_builtins() {
    let (code, out, err) = slipway(&["plugins", "list"]);
    assert_eq!(code, 0, "{err}");
    for line in ["command ", "http-check ", "tcp-check ", "webhook "] {
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

/// `packaging/slipway.service` as (section, key, value), comments left out.
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not `key=value` in the unit: {line}"));
        out.push((section.clone(), key.trim().into(), value.trim().into()));
    }
    out
}

/// Seconds of a systemd time span as the unit writes it ("30s", "2min", "45").
fn unit_seconds(value: &str) -> u64 {
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not a time span: {value}"));
    match &value[digits.len()..] {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        other => panic!("unexpected time unit {other:?} in {value}"),
    }
}

/// The shipped unit must keep matching the binary: the command it starts is
/// one the real `slipway` accepts, and the settings the agent's shutdown
/// and the install guide rely on are there.
#[test]
fn systemd_unit_starts_the_real_agent_command_with_its_safety_settings() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let unit_file = repo.join("packaging/slipway.service");
    let text = std::fs::read_to_string(&unit_file).unwrap();
    let settings = unit_settings(&text);
    let get = |section: &str, key: &str| -> Vec<String> {
        settings
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.clone())
            .collect()
    };
    let one = |section: &str, key: &str| -> String {
        let values = get(section, key);
        assert_eq!(
            values.len(),
            1,
            "[{section}] {key}= must be set once: {values:?}"
        );
        values[0].clone()
    };

    // ExecStart: the installed binary, a subcommand and flags the real
    // binary accepts, and the config path the install guide uses.
    let exec = one("Service", "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/local/bin/slipway", "{exec}");
    assert_eq!(
        argv[1..],
        ["agent", "-c", "/etc/slipway/slipway.toml"],
        "{exec}"
    );
    let (code, help, err) = slipway(&[argv[1], "--help"]);
    assert_eq!(code, 0, "`slipway {} --help`: {err}", argv[1]);
    assert!(help.contains("-c, --config <CONFIG>"), "{help}");
    // The same arguments, with a config that does not exist: the binary
    // parses them and goes on to read exactly that file.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("slipway.toml");
    let mut args: Vec<&str> = argv[1..].to_vec();
    let at = args.iter().position(|a| *a == "-c").unwrap() + 1;
    args[at] = missing.to_str().unwrap();
    let (code, _, err) = slipway(&args);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{}:1:1: cannot read the config file",
            missing.display()
        )),
        "the unit's arguments must reach the agent: {err}"
    );

    for (key, want) in [
        ("Type", "exec"),
        ("User", "slipway"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        // SIGTERM to the agent only: the apps outlive it and are adopted.
        ("KillMode", "process"),
        ("StateDirectory", "slipway"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
    ] {
        assert_eq!(one("Service", key), want, "[Service] {key}=");
    }
    assert!(unit_seconds(&one("Service", "RestartSec")) > 0);
    // Above the default stop_grace (10s) with room to record the
    // deployment in progress; the apps are stopped in parallel.
    assert!(unit_seconds(&one("Service", "TimeoutStopSec")) >= 20);
    assert!(
        get("Service", "ReadWritePaths")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == "/var/lib/slipway")),
        "the state dir must be writable under ProtectSystem=strict"
    );
    assert!(
        get("Service", "MemoryDenyWriteExecute").is_empty(),
        "wasmtime compiles plugins at run time: MemoryDenyWriteExecute would break every plugin"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("# LoadCredential=")),
        "an example LoadCredential= line (commented) for [secrets] credential"
    );
    assert_eq!(one("Install", "WantedBy"), "multi-user.target");

    // Where systemd's own checker is installed, it must find no unknown
    // or invalid setting (the binary path is pointed at the real one).
    let verifier = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if verifier.is_ok_and(|o| o.status.success()) {
        let copy = dir.path().join("slipway.service");
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/slipway", env!("CARGO_BIN_EXE_slipway")),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {report}");
        assert!(report.trim().is_empty(), "systemd-analyze verify: {report}");
    } else {
        eprintln!("systemd-analyze not installed: unit checked without it");
    }
}

#[test]
fn init_writes_a_config_that_validates_and_never_overwrites_one_silently() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let config = dir.path().join("slipway.toml");
    let c = config.to_str().unwrap();
    let (code, out, err) = slipway(&[
        "init",
        "web",
        "--path",
        app.to_str().unwrap(),
        "--port",
        "18080",
        "--config",
        c,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("staging on port 18081, production on port 18080"),
        "{out}"
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("source = { path = \"app\" }"), "{written}");
    let (code, out, err) = slipway(&["validate", "-c", c]);
    assert_eq!(
        code, 0,
        "the starter config must validate as written: {err}\n{written}"
    );
    assert!(out.contains("ok (1 apps, 2 plugins)"), "{out}");

    // Again, without --force: refused with the fix, the file untouched.
    let (code, _, err) = slipway(&["init", "other", "--config", c]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);

    // A name that cannot be a table, a path and a program is refused.
    let elsewhere = dir.path().join("other.toml");
    let (code, _, err) = slipway(&["init", "my app", "--config", elsewhere.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("app name `my app` is not usable"), "{err}");
    assert!(!elsewhere.exists());

    // With --force it is replaced, and still valid.
    let (code, _, err) = slipway(&[
        "init",
        "api",
        "--path",
        app.to_str().unwrap(),
        "--config",
        c,
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("[apps.api]")
    );
    let (code, _, err) = slipway(&["validate", "-c", c]);
    assert_eq!(code, 0, "{err}");
}
