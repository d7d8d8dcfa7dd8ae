//! The quickstart app under a real agent: a copy of examples/quickstart in a
//! temp dir with free ports and short bakes, the `slipway` binary running
//! it, and the waits the end-to-end tests share.

pub use super::agent::{Agent, AgentBuilder, Fault, libc_kill, wait_for};
pub use super::config::{App, Env, PluginDef, StepConfig, TestConfig};
use serde_json::json;
use slipway::store::{DeploymentState, Journal};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A copy of the quickstart in a temp dir, with free ports and short bakes.
pub struct Quickstart {
    pub dir: tempfile::TempDir,
    pub staging: u16,
    pub production: u16,
    /// What `write_config` writes (its version aside): change a field to
    /// change the file.
    pub config: TestConfig,
}

impl Quickstart {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("src")).unwrap();
        std::fs::copy(
            repo.join("examples/quickstart/app/src/main.rs"),
            app.join("src/main.rs"),
        )
        .unwrap();
        let (staging, production) = (super::app_port(), super::app_port());
        let q = Self {
            dir,
            staging,
            production,
            config: quickstart_config(staging, production),
        };
        q.write_config("1.0.0");
        q
    }

    /// The quickstart as `examples/quickstart/slipway.toml` has it: both
    /// environments behind the traffic layer on the test's public ports,
    /// checked on each release's own port. Short drains; no kept previous
    /// release (a test that wants one sets `keep_previous`).
    pub fn behind_traffic() -> Self {
        let mut q = Self::new();
        for (name, port) in [("staging", q.staging), ("production", q.production)] {
            let env = q.hello().env_mut(name);
            env.run = Some(json!({ "command": "./hello" }));
            env.traffic = Some(json!({
                "listen": format!("127.0.0.1:{port}"),
                "drain": "2s",
                "keep_previous": "0s",
                "start_timeout": "20s",
            }));
            let release = |path: &str| format!("http://${{release.addr}}{path}");
            if let Some(smoke) = &mut env.smoke {
                smoke.params["url"] = json!(release("/"));
            }
            if let Some(health) = &mut env.health {
                health.params["url"] = json!(release("/healthz"));
            }
        }
        q.write_config("1.0.0");
        q
    }

    /// Set a key of `env`'s `traffic` table.
    pub fn traffic(&mut self, env: &str, key: &str, value: serde_json::Value) {
        let env = self.hello().env_mut(env);
        env.traffic.as_mut().expect("an environment with traffic")[key] = value;
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("slipway.toml")
    }

    /// The quickstart app's config.
    pub fn hello(&mut self) -> &mut App {
        self.config.app_mut("hello")
    }

    pub fn staging_env(&mut self) -> &mut Env {
        self.hello().env_mut("staging")
    }

    pub fn production_env(&mut self) -> &mut Env {
        self.hello().env_mut("production")
    }

    /// The config's text with the app at `version`.
    pub fn config_text(&self, version: &str) -> String {
        let mut config = self.config.clone();
        config.app_mut("hello").version = version.into();
        config.render()
    }

    /// Save like an editor does: write a new file, rename it over the old.
    pub fn write_config(&self, version: &str) {
        self.save(&self.config_text(version));
    }

    pub fn save(&self, text: &str) {
        let tmp = self.dir.path().join(".slipway.toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
    }

    /// An agent for this config, to adjust before `spawn`.
    pub fn agent(&self) -> AgentBuilder {
        AgentBuilder::new(&self.config())
    }

    pub fn start_agent(&self) -> Agent {
        self.agent().spawn()
    }

    pub fn journal(&self) -> Journal {
        Journal::open(&self.dir.path().join("state/journal.db")).unwrap()
    }
}

impl Drop for Quickstart {
    /// Apps and the traffic layer outlive a stopped agent by design: kill
    /// what this test's state dir still names, so no test leaves processes.
    fn drop(&mut self) {
        super::agent::reap(&self.state_dir());
    }
}

/// GET a path from the app on `port`: (status, body), or None if down.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

pub fn serves(port: u16, version: &str) -> bool {
    matches!(get(port, "/"), Some((200, body)) if body.contains(&format!("hello from {version}")))
}

pub fn latest(q: &Quickstart) -> Option<slipway::store::Deployment> {
    q.journal()
        .deployments(Some("hello"), 1)
        .ok()?
        .into_iter()
        .next()
}

pub fn wait_deployment_end(
    q: &Quickstart,
    agent: &Agent,
    version: &str,
) -> slipway::store::Deployment {
    let mut found = None;
    wait_for(
        &format!("the {version} deployment to end"),
        agent,
        Duration::from_secs(90),
        || {
            found =
                latest(q).filter(|d| d.version == version && d.state != DeploymentState::Running);
            found.is_some()
        },
    );
    found.unwrap()
}

/// The deployment succeeded; if not, fail with its reason and the agent's log.
pub fn assert_succeeded(d: &slipway::store::Deployment, agent: &Agent) {
    assert_eq!(
        d.state,
        DeploymentState::Succeeded,
        "{:?}\n{}",
        d.reason,
        agent.log()
    );
}

/// The quickstart's build: compile the app with rustc.
pub fn hello_build() -> StepConfig {
    StepConfig::command(json!(["rustc --edition 2024 src/main.rs -o hello"]))
}

/// `examples/quickstart/slipway.toml` with the test's ports and short
/// bakes: build with rustc, staging then production, each smoke-tested and
/// health-checked by `http-check`.
fn quickstart_config(s: u16, p: u16) -> TestConfig {
    let smoke = |port: u16| {
        StepConfig::new(
            "http-check",
            json!({ "url": format!("http://127.0.0.1:{port}/"), "retries": 30, "retry_delay_ms": 100 }),
        )
    };
    let health = |port: u16| {
        StepConfig::new(
            "http-check",
            json!({ "url": format!("http://127.0.0.1:{port}/healthz") }),
        )
    };
    let mut staging = Env::hello("staging", s);
    staging.smoke = Some(smoke(s));
    staging.health = Some(health(s).health("500ms", 2, "1s"));
    let mut production = Env::hello("production", p);
    production.promote_from = Some("staging".into());
    production.smoke = Some(smoke(p));
    production.health = Some(health(p).health("500ms", 2, "5s").unhealthy_after(2));
    let mut command = PluginDef::new("command", "builtin:command", json!({ "exec": ["rustc"] }));
    command.timeout = Some("2m".into());
    TestConfig {
        stop_grace: Some("2s".into()),
        plugins: vec![
            command,
            PluginDef::new(
                "http-check",
                "builtin:http-check",
                json!({ "http": ["127.0.0.1:*"] }),
            ),
        ],
        apps: vec![App {
            keep_releases: Some(2),
            environments: vec![staging, production],
            ..App::new("hello", "1.0.0", hello_build())
        }],
        ..TestConfig::new()
    }
}
