//! The config parser's tests: whole documents in, the typed model or
//! located errors out.

use super::*;

/// One directory with an `app/` for every test config, so that paths
/// (and so spec hashes) are stable within a test run.
fn dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        dir
    })
    .path()
}

fn parse(text: &str) -> Result<Config, Vec<String>> {
    let file = dir().join("slipway.toml");
    Config::parse(&file, text).map_err(|e| {
        e.0.iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
            .collect()
    })
}

const GOOD: &str = r#"
[plugins.check]
source = "builtin:http-check"
grants = { http = ["127.0.0.1:*"] }

[apps.web]
version = "1.2.3"
source = { path = "app" }

[apps.web.environments.production]
promote_from = "staging"
run = { command = "./web" }
health = { plugin = "check", params = { url = "http://127.0.0.1:1/" }, interval = "1s", healthy_after = 2 }

[apps.web.environments.staging]
run = { command = "./web", env = { PORT = "8081" } }
"#;

#[test]
fn parses_and_orders_environments_by_promotion() {
    let config = parse(GOOD).unwrap();
    let app = &config.apps["web"];
    assert_eq!(app.version.to_string(), "1.2.3");
    let order: Vec<&str> = app.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(order, ["staging", "production"]);
    let health = app.environments[1].health.as_ref().unwrap();
    assert_eq!(
        health.bake,
        Duration::from_secs(2),
        "bake defaults to interval × healthy_after"
    );
    assert_eq!(config.plugins["check"].grants.http.len(), 1);
}

#[test]
fn reports_every_error_with_its_location() {
    let text = GOOD
        .replace("version = \"1.2.3\"", "version = \"1.2\"\nversoin = 1")
        .replace("interval = \"1s\"", "interval = \"fast\"")
        .replace("127.0.0.1:*", "127.0.0.1");
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].starts_with("4:20: `http`: `127.0.0.1`: expected host:port"),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with("7:11: `version` `1.2` is not semver"),
        "{errors:#?}"
    );
    assert!(
        errors[2].starts_with("8:1: unknown key `versoin` in [apps.web]"),
        "{errors:#?}"
    );
    assert!(
        errors[3].contains("`interval`: `fast` is not a duration"),
        "{errors:#?}"
    );
}

/// A grant must not reach the agent's own files: its state dir, a dir
/// holding it, or one inside it (audit finding: `dirs_rw = [state_dir]`
/// validated).
#[test]
fn grants_that_reach_the_state_dir_are_errors() {
    for (grant, why) in [
        (
            r#"dirs_rw = ["state"]"#,
            "would give the plugin the agent's state dir",
        ),
        (
            r#"dirs = ["."]"#,
            "would give the plugin the agent's state dir",
        ),
        (
            r#"dirs = ["/"]"#,
            "would give the plugin the agent's state dir",
        ),
        (
            r#"dirs_rw = ["state/cache"]"#,
            "lies in the agent's state dir",
        ),
        (
            r#"dirs = ["./state/../state/releases"]"#,
            "lies in the agent's state dir",
        ),
    ] {
        let text = format!(
            "[agent]\nstate_dir = \"state\"\n{}",
            GOOD.replace(
                r#"grants = { http = ["127.0.0.1:*"] }"#,
                &format!(r#"grants = {{ http = ["127.0.0.1:*"], {grant} }}"#)
            )
        );
        let errors = parse(&text).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("6:") && e.contains(why)),
            "{grant}: {errors:#?}"
        );
    }
    let elsewhere = GOOD.replace(
        r#"grants = { http = ["127.0.0.1:*"] }"#,
        r#"grants = { http = ["127.0.0.1:*"], dirs = ["app"] }"#,
    );
    parse(&format!("[agent]\nstate_dir = \"state\"\n{elsewhere}")).unwrap();
}

#[test]
fn promotion_cycles_and_unknown_environments_are_errors() {
    let cycle = GOOD.replace(
        "[apps.web.environments.staging]\n",
        "[apps.web.environments.staging]\npromote_from = \"production\"\n",
    );
    let errors = parse(&cycle).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("in a cycle")),
        "{errors:#?}"
    );
    let unknown = GOOD.replace("promote_from = \"staging\"", "promote_from = \"qa\"");
    let errors = parse(&unknown).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("promote_from `qa`: no such environment")),
        "{errors:#?}"
    );
}

#[test]
fn syntax_errors_are_located() {
    let errors = parse("[apps.web\nversion = 1").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("1:"), "{errors:#?}");
    assert!(errors[0].contains("invalid TOML"), "{errors:#?}");
}

#[test]
fn spec_hash_changes_with_version_and_params_only() {
    let a = parse(GOOD).unwrap().apps["web"].spec_hash();
    let b = parse(&GOOD.replace("1.2.3", "1.2.4")).unwrap().apps["web"].spec_hash();
    let c = parse(&GOOD.replace("127.0.0.1:1/", "127.0.0.1:2/"))
        .unwrap()
        .apps["web"]
        .spec_hash();
    let same = parse(&GOOD.replace("[plugins.check]", "# a comment\n[plugins.check]"))
        .unwrap()
        .apps["web"]
        .spec_hash();
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(a, same);
}

#[test]
fn the_api_stays_on_loopback_unless_remote_is_allowed() {
    let with = |agent: &str| format!("[agent]\n{agent}\n{GOOD}");
    let errors = parse(&with("listen = \"0.0.0.0:7171\"")).unwrap_err();
    assert!(
        errors[0].starts_with("2:10: `listen` = \"0.0.0.0:7171\" is not a loopback address"),
        "{errors:#?}"
    );
    assert!(errors[0].contains("allow_remote_api = true"), "{errors:#?}");
    let allowed = parse(&with("listen = \"0.0.0.0:7171\"\nallow_remote_api = true")).unwrap();
    assert!(allowed.agent.allow_remote_api);
    let local = parse(&with("listen = \"[::1]:0\"")).unwrap();
    assert_eq!(local.agent.listen, "[::1]:0");
    let errors = parse(&with("allow_remote_api = \"yes\"")).unwrap_err();
    assert!(errors[0].contains("true or false"), "{errors:#?}");
}

#[test]
fn manual_gates_and_pre_deploy_steps_parse_with_locations() {
    let env = "[apps.web.environments.production]\n";
    let with = |extra: &str| GOOD.replace(env, &format!("{env}{extra}\n"));
    let config = parse(&with(
        "promote = \"manual\"\napproval_timeout = \"1h\"\npre_deploy = [{ plugin = \"check\" }, { plugin = \"other\" }]",
    ))
    .unwrap();
    let prod = config.apps["web"]
        .environment("production")
        .unwrap()
        .clone();
    assert_eq!(prod.promote, Promote::Manual);
    assert_eq!(prod.approval_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(prod.pre_deploy.len(), 2);
    let auto = parse(GOOD).unwrap().apps["web"].spec_hash();
    let gated = parse(&with("promote = \"manual\"")).unwrap().apps["web"].spec_hash();
    assert_eq!(
        auto, gated,
        "a gate is policy, not part of what is deployed"
    );
    let errors = parse(&with("promote = \"later\"")).unwrap_err();
    assert!(
        errors[0].contains("`promote` must be \"auto\" or \"manual\""),
        "{errors:#?}"
    );
    let errors = parse(&with("approval_timeout = \"1h\"")).unwrap_err();
    assert!(
        errors[0].contains("needs `promote = \"manual\"`"),
        "{errors:#?}"
    );
    let errors = parse(&with("pre_deploy = [{ params = {} }]")).unwrap_err();
    assert!(errors[0].contains("`pre_deploy`[0]"), "{errors:#?}");
}

#[test]
fn notify_steps_are_parsed_but_not_part_of_the_spec() {
    let hook = |url: &str| {
        GOOD.replace(
            "source = { path = \"app\" }\n",
            &format!(
                "source = {{ path = \"app\" }}\nnotify = [{{ plugin = \"hook\", params = {{ url = \"{url}\" }} }}, {{ plugin = \"other\" }}]\n"
            ),
        )
    };
    let config = parse(&hook("http://127.0.0.1:9/a")).unwrap();
    let app = &config.apps["web"];
    let plugins: Vec<&str> = app.notify.iter().map(|s| s.plugin.as_str()).collect();
    assert_eq!(plugins, ["hook", "other"]);
    assert_eq!(app.notify[0].params["url"], "http://127.0.0.1:9/a");
    assert_eq!((app.notify[0].at.line, app.notify[0].at.col), (9, 11));
    let without = parse(GOOD).unwrap().apps["web"].spec_hash();
    let other_url = parse(&hook("http://127.0.0.1:9/b")).unwrap().apps["web"].spec_hash();
    assert_eq!(app.spec_hash(), without, "adding notify must not redeploy");
    assert_eq!(other_url, without, "editing notify must not redeploy");

    let bad = GOOD.replace(
        "source = { path = \"app\" }\n",
        "source = { path = \"app\" }\nnotify = { plugin = \"hook\" }\n",
    );
    let errors = parse(&bad).unwrap_err();
    assert!(
        errors[0].starts_with("9:10: `notify` must be an array of steps"),
        "{errors:#?}"
    );
    let missing = GOOD.replace(
        "source = { path = \"app\" }\n",
        "source = { path = \"app\" }\nnotify = [{ params = {} }]\n",
    );
    let errors = parse(&missing).unwrap_err();
    assert!(
        errors[0].starts_with("9:11: `notify`[0] needs `plugin`"),
        "{errors:#?}"
    );
}

/// Found writing the config fuzz target: `interval` × `healthy_after`
/// overflowed (a panic), and a count past `u32::MAX` wrapped (4294967296
/// became 0: a gate that always passed).
#[test]
fn huge_health_gates_are_located_errors() {
    let with = |gate: &str| GOOD.replace("interval = \"1s\", healthy_after = 2", gate);
    let errors = parse(&with("interval = \"876000h\", healthy_after = 4294967295")).unwrap_err();
    assert!(
        errors[0].starts_with("13:10: `interval` × `healthy_after` is longer than 100 years"),
        "{errors:#?}"
    );
    let errors = parse(&with("healthy_after = 4294967296")).unwrap_err();
    assert!(
        errors[0].contains("`healthy_after` may be at most 4294967295, not 4294967296"),
        "{errors:#?}"
    );
    let errors = parse(&with("unhealthy_after = 9223372036854775807")).unwrap_err();
    assert!(
        errors[0].contains("`unhealthy_after` may be at most"),
        "{errors:#?}"
    );
}

/// Found writing the config fuzz target's invariants: an app whose
/// `environments` table is empty was accepted, with nowhere to deploy to.
#[test]
fn an_empty_environments_table_is_an_error() {
    let start = GOOD.find("[apps.web.environments.production]").unwrap();
    let text = format!("{}environments = {{}}\n", &GOOD[..start]);
    let errors = parse(&text).unwrap_err();
    assert_eq!(
        errors,
        ["10:16: [apps.web] has no `[apps.web.environments.ENV]`"],
        "{text}"
    );
}

const SHA: &str = "A1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn with_source(source: &str) -> String {
    GOOD.replace("source = { path = \"app\" }", &format!("source = {source}"))
}

#[test]
fn a_url_source_is_pinned_by_its_sha256() {
    let text = with_source(&format!(
        "{{ url = \"https://example.com/rel/app-1.2.3.tar.gz\", sha256 = \"{SHA}\" }}"
    ));
    let app = &parse(&text).unwrap().apps["web"];
    assert_eq!(
        app.source,
        AppSource::Url {
            url: "https://example.com/rel/app-1.2.3.tar.gz".into(),
            sha256: SHA.to_ascii_lowercase(),
        }
    );
    let other_sha = text.replace(&SHA[..4], "ffff");
    let other_url = text.replace("1.2.3.tar.gz", "1.2.4.tar.gz");
    let hash = app.spec_hash();
    assert_ne!(hash, parse(&other_sha).unwrap().apps["web"].spec_hash());
    assert_ne!(hash, parse(&other_url).unwrap().apps["web"].spec_hash());
}

#[test]
fn bad_url_sources_are_located_errors() {
    let cases = [
        (
            format!("{{ url = \"ftp://example.com/app.tgz\", sha256 = \"{SHA}\" }}"),
            "8:18: `source.url`: `ftp://example.com/app.tgz` is not an http or https URL",
        ),
        (
            format!("{{ url = \"https://example.com/\", sha256 = \"{SHA}\" }}"),
            "8:18: `source.url`: `https://example.com/` does not end in a file name",
        ),
        (
            "{ url = \"https://example.com/app.tgz\" }".to_string(),
            "8:10: `source` with `url` needs `sha256`",
        ),
        (
            "{ url = \"https://example.com/app.tgz\", sha256 = \"abc123\" }".to_string(),
            "8:58: `source.sha256` must be 64 hex digits, not `abc123`",
        ),
        (
            format!(
                "{{ url = \"https://example.com/app.tgz\", sha256 = \"{}\" }}",
                "g".repeat(64)
            ),
            "8:58: `source.sha256` must be 64 hex digits",
        ),
        (
            format!("{{ url = \"https://example.com/app.tgz\", sha256 = \"{SHA}\", strip = 1 }}"),
            "8:126: unknown key `strip` in `source` (expected one of: path, url, sha256)",
        ),
        (
            format!(
                "{{ path = \"app\", url = \"https://example.com/app.tgz\", sha256 = \"{SHA}\" }}"
            ),
            "8:32: `source` has both `path` and `url`: keep one",
        ),
        (
            format!("{{ path = \"app\", sha256 = \"{SHA}\" }}"),
            "8:35: `source.sha256` goes with `url`",
        ),
        (
            "{}".to_string(),
            "8:10: `source` needs `path` (a directory) or `url` (with `sha256`)",
        ),
    ];
    for (source, expected) in cases {
        let errors = parse(&with_source(&source)).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{source}: {errors:#?}"
        );
    }
}

const TRAFFIC: &str = r#"
[plugins.check]
source = "builtin:http-check"
grants = { http = ["127.0.0.1:*"] }

[apps.web]
version = "1.2.3"
source = { path = "app" }

[apps.web.environments.production]
run = { command = "./web" }
traffic = { listen = "127.0.0.1:8080", mode = "tcp", drain = "0s", keep_previous = "1m", canary = { share = "12.5%", for = "30s", max_error_ratio = "0.5%", max_p99 = "300ms" } }
health = { plugin = "check", params = { url = "http://${release.addr}/healthz" } }
"#;

#[test]
fn traffic_parses_with_its_defaults_and_only_listen_and_mode_in_the_spec() {
    let config = parse(TRAFFIC).unwrap();
    let env = &config.apps["web"].environments[0];
    let t = env.traffic.as_ref().unwrap();
    assert_eq!(t.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(t.mode, TrafficMode::Tcp);
    assert_eq!(t.drain, Duration::ZERO);
    assert_eq!(t.start_timeout, DEFAULT_START_TIMEOUT);
    assert_eq!(t.keep_previous, Duration::from_secs(60));
    let canary = t.canary.as_ref().unwrap();
    assert_eq!(canary.share_permille, 125);
    assert_eq!(canary.duration, Duration::from_secs(30));
    assert!((canary.max_error_ratio - 0.005).abs() < 1e-12);
    assert_eq!(canary.max_p99, Some(Duration::from_millis(300)));
    assert_eq!(canary.min_requests, 20);
    // Policy changes do not redeploy; the address does.
    let base = config.apps["web"].spec_hash();
    let policy = parse(&TRAFFIC.replace("drain = \"0s\"", "drain = \"9s\"")).unwrap();
    assert_eq!(policy.apps["web"].spec_hash(), base);
    let moved = parse(&TRAFFIC.replace("8080", "8090")).unwrap();
    assert_ne!(moved.apps["web"].spec_hash(), base);
}

#[test]
fn bad_traffic_is_a_located_error() {
    let cases = [
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost:80\"",
            "`traffic.listen` must be IP:PORT",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:0\"",
            "a port other than 0",
        ),
        (
            "mode = \"tcp\"",
            "mode = \"udp\"",
            "`traffic.mode` must be \"http\" or \"tcp\"",
        ),
        (
            "share = \"12.5%\"",
            "share = \"100%\"",
            "between 0.1% and 99.9%",
        ),
        (
            "share = \"12.5%\"",
            "share = \"ten\"",
            "must be a percentage",
        ),
        (
            "max_p99 = \"300ms\"",
            "max_p99 = \"soon\"",
            "`traffic.canary.max_p99`",
        ),
        ("drain = \"0s\"", "drains = \"0s\"", "drains"),
        (
            "run = { command = \"./web\" }",
            "run = { command = \"./web\", env = { PORT = \"1\" } }",
            "sets `run.env.PORT` and `traffic`",
        ),
        (
            "run = { command = \"./web\" }",
            "deploy = { plugin = \"check\", params = { url = \"http://x/\" } }",
            "`traffic` needs `run`",
        ),
    ];
    for (from, to, expected) in cases {
        let text = TRAFFIC.replace(from, to);
        assert_ne!(text, TRAFFIC, "{from}");
        let errors = parse(&text).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains(expected) && e.starts_with("12:")),
            "{to}: {errors:?}"
        );
    }
    // Two environments on one address.
    let twice = format!(
        "{TRAFFIC}\n[apps.web.environments.staging]\nrun = {{ command = \"./web\" }}\ntraffic = {{ listen = \"0.0.0.0:8080\" }}\n"
    );
    let errors = parse(&twice).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("overlaps [apps.web.environments.production]'s 127.0.0.1:8080")),
        "{errors:?}"
    );
    // `${release.addr}` without `traffic`: nothing would fill it in.
    let plain = TRAFFIC.replace(
        "traffic = { listen = \"127.0.0.1:8080\", mode = \"tcp\", drain = \"0s\", keep_previous = \"1m\", canary = { share = \"12.5%\", for = \"30s\", max_error_ratio = \"0.5%\", max_p99 = \"300ms\" } }\n",
        "",
    );
    let errors = parse(&plain).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("only an environment with `traffic` has")),
        "{errors:?}"
    );
}
