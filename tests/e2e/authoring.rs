//! Writing a plugin, as an author would: `slipway plugin new` writes a
//! skeleton in Rust, Python or JavaScript that builds with its own
//! `build.sh` and passes `slipway plugins inspect`; `slipway plugin test`
//! runs one step of it through the real runtime against real loopback
//! servers and real programs, and says what happened with its exit code.
//!
//! Rust skeletons of every kind build into one shared target dir
//! (`target/plugin-skeletons`), so only the first build compiles the SDK's
//! dependencies. Python and JavaScript skeletons use the toolchains the
//! example plugins install (`target/toolchains`).

use crate::support;

use serde_json::{Value, json};
use slipway::runtime::builtin;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{HttpServer, closed_port, fixture, slipway};

/// The workspace's target dir (BUILD_DIR is <target>/wasm-plugins/wasm32-wasip2/plugin).
fn repo_target() -> PathBuf {
    Path::new(builtin::BUILD_DIR)
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf()
}

/// `slipway plugin new NAME --kind KIND --lang LANG --dir ROOT/NAME`.
fn new_skeleton(root: &Path, name: &str, kind: &str, lang: &str) -> PathBuf {
    let dir = root.join(name);
    let (code, out, err) = slipway(&[
        "plugin",
        "new",
        name,
        "--kind",
        kind,
        "--lang",
        lang,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "plugin new {name}: {err}");
    assert!(out.contains(&format!("a {kind} plugin in {lang}")), "{out}");
    dir
}

/// Run a skeleton's `build.sh`: its `NAME.wasm`.
fn build(dir: &Path) -> PathBuf {
    let target = repo_target();
    let mut cmd = Command::new(dir.join("build.sh"));
    // The outer cargo's settings must not leak into the nested build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let started = Instant::now();
    let out = cmd
        .env("CARGO_TARGET_DIR", target.join("plugin-skeletons"))
        .env("SLIPWAY_TOOLCHAINS", target.join("toolchains"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}/build.sh failed ({}):\n{}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let name = dir.file_name().unwrap().to_str().unwrap();
    let wasm = dir.join(format!("{name}.wasm"));
    eprintln!(
        "{name}: built in {:.1}s, {} KB",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&wasm).unwrap().len() / 1024
    );
    wasm
}

/// `slipway plugins inspect --json`, which must succeed.
fn inspect(wasm: &Path) -> Value {
    let (code, out, err) = slipway(&["plugins", "inspect", wasm.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "inspect {}: {err}", wasm.display());
    serde_json::from_str(&out).unwrap()
}

/// `slipway plugin test ARGS --json`: the exit code and the report.
fn plugin_test(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["plugin", "test"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = slipway(&all);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("plugin test {args:?}: {e}: exit {code}\n{out}\n{err}"));
    (code, report)
}

/// The messages the plugin itself logged (source `plugin`).
fn plugin_logs(report: &Value) -> Vec<String> {
    report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["source"] == "plugin")
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

/// A skeleton's `describe()`, as `plugins inspect` shows it.
fn assert_described(info: &Value, name: &str, kind: &str) {
    assert_eq!(info["name"], name, "{info}");
    assert_eq!(info["kinds"], json!([kind]), "{info}");
    assert_eq!(info["api_version"], "0.1.0", "{info}");
    assert_eq!(info["api_compatible"], true, "{info}");
    assert_eq!(info["params_schema"]["type"], "object", "{info}");
}

/// The http-family skeletons (health-check, smoke-test) against a real
/// server: healthy/ok when it answers, not when it fails or is not granted.
fn check_probe(wasm: &Path, kind: &str, cache: &str) {
    let server = HttpServer::start();
    let grant = format!("http=127.0.0.1:{}", server.port);
    let wasm = wasm.to_str().unwrap();
    let params = |path: &str| json!({ "url": server.url(path) }).to_string();
    let (pass, fail) = if kind == "health-check" {
        ("healthy", "unhealthy")
    } else {
        ("ok", "failed")
    };

    let ok = params("/ok");
    let (code, report) = plugin_test(&[
        wasm,
        "--kind",
        kind,
        "--params",
        &ok,
        "--grant",
        &grant,
        "--cache-dir",
        cache,
    ]);
    assert_eq!((code, &report["result"]), (0, &json!(pass)), "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("200"),
        "{report}"
    );
    assert!(server.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let broken = params("/fail");
    let (code, report) = plugin_test(&[
        wasm,
        "--kind",
        kind,
        "--params",
        &broken,
        "--grant",
        &grant,
        "--cache-dir",
        cache,
    ]);
    assert_eq!((code, &report["result"]), (1, &json!(fail)), "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("status 500"),
        "{report}"
    );

    // The same request without the grant: denied by the agent, not sent.
    let (code, report) =
        plugin_test(&[wasm, "--kind", kind, "--params", &ok, "--cache-dir", cache]);
    assert_eq!((code, &report["result"]), (1, &json!(fail)), "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("denied"),
        "{report}"
    );
}

/// The exec-family build skeleton: runs a granted program in the release
/// dir, which it may write; a failing program fails the step with its
/// output.
fn check_build(wasm: &Path, cache: &str) {
    let wasm = wasm.to_str().unwrap();
    let release = tempfile::tempdir().unwrap();
    let rel = release.path().to_str().unwrap();
    let params =
        json!({ "program": "sh", "args": ["-c", "echo \"$SLIPWAY_VERSION\" > built.txt"] })
            .to_string();
    let (code, report) = plugin_test(&[
        wasm,
        "--params",
        &params,
        "--grant",
        "exec=sh",
        "--release",
        rel,
        "--cache-dir",
        cache,
    ]);
    assert_eq!((code, &report["result"]), (0, &json!("ok")), "{report}");
    assert_eq!(report["value"]["type"], "artifact", "{report}");
    assert_eq!(
        std::fs::read_to_string(release.path().join("built.txt")).unwrap(),
        "1.0.0\n"
    );

    let failing =
        json!({ "program": "sh", "args": ["-c", "echo compiler says no; exit 3"] }).to_string();
    let (code, report) = plugin_test(&[
        wasm,
        "--params",
        &failing,
        "--grant",
        "exec=sh",
        "--cache-dir",
        cache,
    ]);
    assert_eq!((code, &report["result"]), (1, &json!("failed")), "{report}");
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("exit code 3") && message.contains("compiler says no"),
        "{message}"
    );

    // Without the exec grant nothing runs.
    let (code, report) = plugin_test(&[wasm, "--params", &params, "--cache-dir", cache]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("not in this plugin's exec grant"),
        "{report}"
    );
}

#[test]
fn rust_skeletons_of_every_kind_build_pass_inspect_and_run_under_plugin_test() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let cache = cache.to_str().unwrap();
    let kinds = [
        "health-check",
        "smoke-test",
        "notify",
        "build",
        "deploy",
        "rollback",
    ];
    let mut built = Vec::new();
    for kind in kinds {
        let name = format!("rs-{kind}");
        let dir = new_skeleton(root.path(), &name, kind, "rust");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("\n[workspace]\n"),
            "a standalone crate: {manifest}"
        );
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugin-sdk")
            .canonicalize()
            .unwrap();
        assert!(
            manifest.contains(&format!("path = \"{}\"", sdk.display())),
            "{manifest}"
        );
        let wasm = build(&dir);
        assert_described(&inspect(&wasm), &name, kind);
        built.push(wasm);
    }
    check_probe(&built[0], "health-check", cache);
    check_probe(&built[1], "smoke-test", cache);

    // notify: the event arrives as JSON.
    let catcher = HttpServer::scripted().fixed("/hook", 204, "").start();
    let params = json!({ "url": catcher.url("/hook") }).to_string();
    let grant = format!("http=127.0.0.1:{}", catcher.port);
    let (code, report) = plugin_test(&[
        built[2].to_str().unwrap(),
        "--params",
        &params,
        "--grant",
        &grant,
    ]);
    assert_eq!((code, &report["result"]), (0, &json!("ok")), "{report}");
    let posts = catcher.received("/hook");
    assert_eq!(posts.len(), 1, "{posts:?}");
    let (content_type, body) = (posts[0].header("content-type"), &posts[0].body);
    assert_eq!(content_type, "application/json");
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        (&event["app"], &event["state"]),
        (&json!("plugin-test"), &json!("succeeded")),
        "{body}"
    );

    check_build(&built[3], cache);

    // deploy: the program sees the release it activates.
    let params = json!({ "program": "sh", "args": ["-c", "echo activating $SLIPWAY_VERSION in $SLIPWAY_ENVIRONMENT"] }).to_string();
    let (code, report) = plugin_test(&[
        built[4].to_str().unwrap(),
        "--params",
        &params,
        "--grant",
        "exec=sh",
    ]);
    assert_eq!((code, &report["result"]), (0, &json!("ok")), "{report}");
    assert!(
        plugin_logs(&report).contains(&"activating 1.0.0 in local".to_string()),
        "{report}"
    );

    // rollback: needs the release to return to.
    let previous = tempfile::tempdir().unwrap();
    let params =
        json!({ "program": "sh", "args": ["-c", "echo back to $SLIPWAY_PREVIOUS_VERSION"] })
            .to_string();
    let rollback = built[5].to_str().unwrap();
    let (code, report) = plugin_test(&[
        rollback,
        "--params",
        &params,
        "--grant",
        "exec=sh",
        "--previous-release",
        previous.path().to_str().unwrap(),
    ]);
    assert_eq!((code, &report["result"]), (0, &json!("ok")), "{report}");
    assert!(
        plugin_logs(&report).contains(&"back to 0.9.0".to_string()),
        "{report}"
    );
    let (code, report) = plugin_test(&[rollback, "--params", &params, "--grant", "exec=sh"]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("no previous release"),
        "{report}"
    );
}

#[test]
fn python_skeletons_build_with_their_toolchain_pass_inspect_and_run_under_plugin_test() {
    // Installs (once) the pinned componentize-py the skeletons share.
    support::examples::python_smoke();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let cache = cache.to_str().unwrap();

    let dir = new_skeleton(root.path(), "py-health", "health-check", "python");
    assert!(
        dir.join("wit/worlds.wit").is_file() && dir.join("wit/deps/http/package.wit").is_file()
    );
    let wasm = build(&dir);
    assert_described(&inspect(&wasm), "py-health", "health-check");
    check_probe(&wasm, "health-check", cache);

    let dir = new_skeleton(root.path(), "py-build", "build", "python");
    let wasm = build(&dir);
    assert_described(&inspect(&wasm), "py-build", "build");
    check_build(&wasm, cache);
}

#[test]
fn javascript_skeletons_build_with_their_toolchain_pass_inspect_and_run_under_plugin_test() {
    // Installs (once) the pinned componentize-js the skeletons share.
    support::examples::js_health();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let cache = cache.to_str().unwrap();

    let dir = new_skeleton(root.path(), "js-smoke", "smoke-test", "js");
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package-lock.json")).unwrap())
            .unwrap();
    assert_eq!(lock["name"], "js-smoke");
    assert_eq!(
        lock["packages"][""]["devDependencies"]["@bytecodealliance/componentize-js"],
        "0.23.0"
    );
    let wasm = build(&dir);
    assert_described(&inspect(&wasm), "js-smoke", "smoke-test");
    check_probe(&wasm, "smoke-test", cache);

    let dir = new_skeleton(root.path(), "js-build", "build", "js");
    let wasm = build(&dir);
    assert_described(&inspect(&wasm), "js-build", "build");
    check_build(&wasm, cache);
}

#[test]
fn plugin_new_refuses_an_existing_dir_and_bad_arguments_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let taken = root.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    let (code, _, err) = slipway(&[
        "plugin",
        "new",
        "taken",
        "--kind",
        "health-check",
        "--lang",
        "rust",
        "--dir",
        taken.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("already exists") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 1);

    let fresh = root.path().join("fresh");
    let dir = fresh.to_str().unwrap();
    for (args, says) in [
        (
            vec!["Bad Name", "--kind", "build", "--lang", "rust"],
            "plugin name `Bad Name` is not usable",
        ),
        (
            vec!["ok", "--kind", "healthcheck", "--lang", "rust"],
            "--kind `healthcheck` is not a step kind",
        ),
        (
            vec!["ok", "--kind", "build", "--lang", "go"],
            "--lang `go` is not one of: rust, python, js",
        ),
        (
            vec![
                "ok",
                "--kind",
                "build",
                "--lang",
                "rust",
                "--sdk",
                "/no/such/sdk",
            ],
            "--sdk /no/such/sdk",
        ),
        (
            vec!["ok", "--kind", "build", "--lang", "rust", "--sdk", "/tmp"],
            "no Cargo.toml",
        ),
    ] {
        let mut all = vec!["plugin", "new"];
        all.extend(args.iter().copied());
        all.extend(["--dir", dir]);
        let (code, _, err) = slipway(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!fresh.exists(), "{args:?} wrote {dir}");
    }
    // `plugins` (plural) still lists and inspects.
    let (code, out, _) = slipway(&["plugins", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("http-check"), "{out}");
}

#[test]
fn plugin_test_reports_logs_result_and_duration_and_exits_by_the_verdict() {
    let server = HttpServer::start();
    let health = support::examples::rust_health();
    let wasm = health.to_str().unwrap();
    let grant = format!("http=127.0.0.1:{}", server.port);

    // The human report: plugin, step, logs, result, duration.
    let ok = json!({ "url": server.url("/ok") }).to_string();
    let (code, out, err) = slipway(&["plugin", "test", wasm, "--params", &ok, "--grant", &grant]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "plugin    ping 0.1.0",
        "step      health-check, release dir ",
        "result    healthy: 200",
        "duration  ",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        out.contains("  debug  host    http GET "),
        "the host's log line: {out}"
    );

    let down = json!({ "url": format!("http://127.0.0.1:{}/", closed_port()) }).to_string();
    let wide = "http=127.0.0.1:*";
    let (code, out, err) = slipway(&["plugin", "test", wasm, "--params", &down, "--grant", wide]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("result    unhealthy: ") && out.contains("connection refused"),
        "{out}"
    );
    assert!(err.contains("the step did not pass: unhealthy"), "{err}");

    // Trap and timeout, from a plugin that misbehaves on purpose.
    let hostile = fixture("hostile");
    let hostile = hostile.to_str().unwrap();
    let (code, report) = plugin_test(&[
        hostile,
        "--kind",
        "smoke-test",
        "--params",
        r#"{"mode":"panic"}"#,
    ]);
    assert_eq!((code, &report["result"]), (1, &json!("trap")), "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("boom"),
        "{report}"
    );
    let started = Instant::now();
    let (code, report) = plugin_test(&[
        hostile,
        "--kind",
        "health-check",
        "--params",
        r#"{"mode":"loop"}"#,
        "--timeout",
        "1s",
    ]);
    assert_eq!(
        (code, &report["result"]),
        (1, &json!("timeout")),
        "{report}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped at its 1s limit"
    );

    // The release dir: the one given, read-only outside a build.
    let release = tempfile::tempdir().unwrap();
    std::fs::write(release.path().join("a"), "").unwrap();
    std::fs::write(release.path().join("b"), "").unwrap();
    let rel = release.path().to_str().unwrap();
    let (code, report) = plugin_test(&[
        hostile,
        "--kind",
        "smoke-test",
        "--params",
        r#"{"mode":"list-release"}"#,
        "--release",
        rel,
    ]);
    assert_eq!(
        (code, &report["message"]),
        (0, &json!("2 entries")),
        "{report}"
    );
    let write = json!({ "mode": "write", "target": release.path().join("c") }).to_string();
    let (code, report) = plugin_test(&[
        hostile,
        "--kind",
        "smoke-test",
        "--params",
        &write,
        "--release",
        rel,
    ]);
    assert_eq!((code, &report["result"]), (1, &json!("failed")), "{report}");
    assert!(!release.path().join("c").exists());

    // A secret granted from the environment is readable and redacted.
    let (code, out, _) = {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args([
                "plugin",
                "test",
                hostile,
                "--kind",
                "smoke-test",
                "--grant",
                "secret=SLIPWAY_TEST_TOKEN",
            ])
            .args([
                "--params",
                r#"{"mode":"log-secret","target":"SLIPWAY_TEST_TOKEN"}"#,
            ])
            .env("SLIPWAY_TEST_TOKEN", "hunter2-very-secret")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 1);
    assert!(
        out.contains("[REDACTED:SLIPWAY_TEST_TOKEN]") && !out.contains("hunter2"),
        "{out}"
    );
}

#[test]
fn plugin_test_refuses_bad_input_with_exit_2_and_says_what_is_wrong() {
    let health = support::examples::rust_health();
    let wasm = health.to_str().unwrap();
    let hostile = fixture("hostile");
    let missing = tempfile::tempdir().unwrap().path().join("gone.wasm");
    for (args, says) in [
        (
            vec![wasm, "--params", "{\"url\": "],
            "--params is not a JSON document",
        ),
        (
            vec![wasm, "--params", "{}"],
            "\"url\" is a required property",
        ),
        (
            vec![wasm, "--params", r#"{"url": 7}"#],
            "/url: 7 is not of type \"string\"",
        ),
        (
            vec![wasm, "--kind", "healthcheck"],
            "--kind `healthcheck` is not a step kind",
        ),
        (
            vec![wasm, "--kind", "build"],
            "implements health-check, not build",
        ),
        (
            vec![hostile.to_str().unwrap()],
            "implements health-check, smoke-test: pass --kind",
        ),
        (vec![missing.to_str().unwrap()], "cannot read plugin file"),
        (
            vec![wasm, "--grant", "net=all"],
            "--grant `net=all`: unknown grant `net`",
        ),
        (
            vec![wasm, "--grant", "http=example.com"],
            "expected host:port",
        ),
        (vec![wasm, "--timeout", "soon"], "--timeout `soon`"),
        (
            vec![wasm, "--release", "/no/such/release"],
            "--release /no/such/release",
        ),
    ] {
        let mut all = vec!["plugin", "test"];
        all.extend(args.iter().copied());
        let (code, out, err) = slipway(&all);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A file that is not a component is a broken plugin (1), not a typo.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not wasm").unwrap();
    let (code, _, err) = slipway(&["plugin", "test", junk.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
}
