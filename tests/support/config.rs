//! A typed config for the tests: what a test changes is a field (a grant,
//! a gate, a bake), not a substring of TOML. `render` writes the file the
//! agent reads, always in the same layout (the quickstart's), so a test
//! that breaks the file on purpose can still find the text it breaks and
//! the line it expects the error at.

use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// `[agent]` and everything under it.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub state_dir: String,
    pub stop_grace: Option<String>,
    pub listen: String,
    pub max_release_mb: Option<u64>,
    /// `[secrets.NAME]` tables, in order: (name, its keys).
    pub secrets: Vec<(String, Value)>,
    pub plugins: Vec<PluginDef>,
    pub apps: Vec<App>,
}

/// `[plugins.NAME]`.
#[derive(Debug, Clone)]
pub struct PluginDef {
    pub name: String,
    /// `builtin:NAME` or a path to a `.wasm` file.
    pub source: String,
    pub sha256: Option<String>,
    pub timeout: Option<String>,
    /// The `grants` table: `{"exec": [...], "http": [...], ...}`.
    pub grants: Value,
}

impl PluginDef {
    pub fn new(name: &str, source: &str, grants: Value) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            sha256: None,
            timeout: None,
            grants,
        }
    }
}

/// `[apps.NAME]` and its environments.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub version: String,
    /// The `source` table: `{"path": "app"}`, or a URL with its sha256.
    pub source: Value,
    pub keep_releases: Option<u32>,
    pub notify: Vec<StepConfig>,
    pub build: StepConfig,
    /// In the order written (promotion order comes from `promote_from`).
    pub environments: Vec<Env>,
}

impl App {
    /// An app built from `app/` by `build`, with no environments yet.
    pub fn new(name: &str, version: &str, build: StepConfig) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            source: json!({ "path": "app" }),
            keep_releases: None,
            notify: Vec::new(),
            build,
            environments: Vec::new(),
        }
    }

    pub fn env_mut(&mut self, name: &str) -> &mut Env {
        self.environments
            .iter_mut()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no environment {name} in the test config"))
    }
}

/// `[apps.APP.environments.NAME]`.
#[derive(Debug, Clone)]
pub struct Env {
    pub name: String,
    pub promote_from: Option<String>,
    /// The `run` table: `{"command": ..., "env": {...}}`.
    pub run: Option<Value>,
    /// The `traffic` table: `{"listen": ..., "drain": ...}`.
    pub traffic: Option<Value>,
    pub deploy: Option<StepConfig>,
    pub smoke: Option<StepConfig>,
    pub health: Option<StepConfig>,
    /// `"manual"` for a manual gate.
    pub promote: Option<String>,
    pub approval_timeout: Option<String>,
    pub on_failure: Option<String>,
    pub pre_deploy: Vec<StepConfig>,
    pub on_rollback: Vec<StepConfig>,
}

impl Env {
    /// An environment that runs nothing and checks nothing (yet).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            promote_from: None,
            run: None,
            traffic: None,
            deploy: None,
            smoke: None,
            health: None,
            promote: None,
            approval_timeout: None,
            on_failure: None,
            pre_deploy: Vec::new(),
            on_rollback: Vec::new(),
        }
    }

    /// An environment running `./hello` on `port`.
    pub fn hello(name: &str, port: u16) -> Self {
        Self {
            run: Some(json!({ "command": "./hello", "env": { "PORT": port.to_string() } })),
            ..Self::new(name)
        }
    }
}

/// One step: `{ plugin = "...", params = {...} }`, plus a health check's
/// schedule.
#[derive(Debug, Clone)]
pub struct StepConfig {
    pub plugin: String,
    pub params: Value,
    pub interval: Option<String>,
    pub healthy_after: Option<u32>,
    pub unhealthy_after: Option<u32>,
    pub bake: Option<String>,
}

impl StepConfig {
    pub fn new(plugin: &str, params: Value) -> Self {
        Self {
            plugin: plugin.into(),
            params,
            interval: None,
            healthy_after: None,
            unhealthy_after: None,
            bake: None,
        }
    }

    /// The `command` plugin running these lines (`run = [...]`).
    pub fn command(run: Value) -> Self {
        Self::new("command", json!({ "run": run }))
    }

    /// A health check every `interval`, healthy after `healthy_after`
    /// passes, baked for `bake`.
    pub fn health(mut self, interval: &str, healthy_after: u32, bake: &str) -> Self {
        self.interval = Some(interval.into());
        self.healthy_after = Some(healthy_after);
        self.bake = Some(bake.into());
        self
    }

    pub fn unhealthy_after(mut self, n: u32) -> Self {
        self.unhealthy_after = Some(n);
        self
    }

    fn render(&self) -> String {
        let mut fields = vec![
            ("plugin".to_string(), json!(self.plugin)),
            ("params".to_string(), self.params.clone()),
        ];
        if let Some(i) = &self.interval {
            fields.push(("interval".into(), json!(i)));
        }
        if let Some(n) = self.healthy_after {
            fields.push(("healthy_after".into(), json!(n)));
        }
        if let Some(n) = self.unhealthy_after {
            fields.push(("unhealthy_after".into(), json!(n)));
        }
        if let Some(b) = &self.bake {
            fields.push(("bake".into(), json!(b)));
        }
        inline_fields(&fields)
    }
}

impl TestConfig {
    /// An agent with its state in `state` beside the config, its API on a
    /// free loopback port, and nothing to deploy yet.
    pub fn new() -> Self {
        Self {
            state_dir: "state".into(),
            stop_grace: None,
            listen: "127.0.0.1:0".into(),
            max_release_mb: None,
            secrets: Vec::new(),
            plugins: Vec::new(),
            apps: Vec::new(),
        }
    }

    pub fn app_mut(&mut self, name: &str) -> &mut App {
        self.apps
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no app {name} in the test config"))
    }

    pub fn plugin_mut(&mut self, name: &str) -> &mut PluginDef {
        self.plugins
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no plugin {name} in the test config"))
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "[agent]\nstate_dir = {}", string(&self.state_dir));
        if let Some(grace) = &self.stop_grace {
            let _ = writeln!(out, "stop_grace = {}", string(grace));
        }
        let _ = writeln!(out, "listen = {}", string(&self.listen));
        if let Some(mb) = self.max_release_mb {
            let _ = writeln!(out, "max_release_mb = {mb}");
        }
        out.push('\n');
        for (name, keys) in &self.secrets {
            let _ = writeln!(out, "[secrets.{name}]");
            for (k, v) in keys.as_object().expect("a secret is a table") {
                let _ = writeln!(out, "{} = {}", key(k), inline(v));
            }
            out.push('\n');
        }
        for p in &self.plugins {
            let _ = writeln!(out, "[plugins.{}]\nsource = {}", p.name, string(&p.source));
            if let Some(sha) = &p.sha256 {
                let _ = writeln!(out, "sha256 = {}", string(sha));
            }
            if let Some(t) = &p.timeout {
                let _ = writeln!(out, "timeout = {}", string(t));
            }
            if p.grants.as_object().is_none_or(|g| !g.is_empty()) {
                let _ = writeln!(out, "grants = {}", inline(&p.grants));
            }
            out.push('\n');
        }
        for app in &self.apps {
            let _ = writeln!(
                out,
                "[apps.{}]\nversion = {}\nsource = {}",
                app.name,
                string(&app.version),
                inline(&app.source)
            );
            if let Some(k) = app.keep_releases {
                let _ = writeln!(out, "keep_releases = {k}");
            }
            if !app.notify.is_empty() {
                let _ = writeln!(out, "notify = {}", step_list(&app.notify));
            }
            let _ = writeln!(out, "build = {}\n", app.build.render());
            for env in &app.environments {
                let _ = writeln!(out, "[apps.{}.environments.{}]", app.name, env.name);
                if let Some(from) = &env.promote_from {
                    let _ = writeln!(out, "promote_from = {}", string(from));
                }
                if let Some(run) = &env.run {
                    let _ = writeln!(out, "run = {}", inline(run));
                }
                if let Some(traffic) = &env.traffic {
                    let _ = writeln!(out, "traffic = {}", inline(traffic));
                }
                for (name, step) in [
                    ("deploy", &env.deploy),
                    ("smoke", &env.smoke),
                    ("health", &env.health),
                ] {
                    if let Some(step) = step {
                        let _ = writeln!(out, "{name} = {}", step.render());
                    }
                }
                for (name, value) in [
                    ("promote", &env.promote),
                    ("approval_timeout", &env.approval_timeout),
                    ("on_failure", &env.on_failure),
                ] {
                    if let Some(value) = value {
                        let _ = writeln!(out, "{name} = {}", string(value));
                    }
                }
                for (name, steps) in [
                    ("pre_deploy", &env.pre_deploy),
                    ("on_rollback", &env.on_rollback),
                ] {
                    if !steps.is_empty() {
                        let _ = writeln!(out, "{name} = {}", step_list(steps));
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}

/// A list of steps: one step on the line, more one per line (indented
/// two spaces, so an error in the Nth is reported on its own line).
fn step_list(steps: &[StepConfig]) -> String {
    match steps {
        [one] => format!("[{}]", one.render()),
        _ => {
            let lines: String = steps
                .iter()
                .map(|s| format!("  {},\n", s.render()))
                .collect();
            format!("[\n{lines}]")
        }
    }
}

/// A TOML basic string.
fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A key: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        string(k)
    }
}

/// A JSON value as an inline TOML value (objects become inline tables).
fn inline(v: &Value) -> String {
    match v {
        Value::Null => panic!("TOML has no null"),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => inline_map(map),
    }
}

fn inline_map(map: &Map<String, Value>) -> String {
    let fields: Vec<(String, Value)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    inline_fields(&fields)
}

fn inline_fields(fields: &[(String, Value)]) -> String {
    if fields.is_empty() {
        return "{}".into();
    }
    let fields: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}
