//! The quickstart app under a real agent: a copy of examples/quickstart in a
//! temp dir with free ports and short bakes, the `slipway` binary running
//! it, and the waits the end-to-end tests share.

use slipway::store::{DeploymentState, Journal};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A copy of the quickstart in a temp dir, with free ports and short bakes.
pub struct Quickstart {
    pub dir: tempfile::TempDir,
    pub staging: u16,
    pub production: u16,
    /// Extra lines for each environment's table, e.g. `promote = "manual"`.
    pub staging_extra: String,
    pub production_extra: String,
    /// The command plugin's grants (default: run rustc).
    pub command_grants: String,
    /// Extra tables at the end of the file, e.g. `[plugins.NAME]` for a
    /// plugin from a file (end each line with a newline).
    pub plugins_extra: String,
    /// Staging's `smoke` step and production's `health` step (the inline
    /// table after `=`), in place of the http-check ones.
    pub staging_smoke: Option<String>,
    pub production_health: Option<String>,
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
        let q = Self {
            dir,
            staging: super::app_port(),
            production: super::app_port(),
            staging_extra: String::new(),
            production_extra: String::new(),
            command_grants: r#"{ exec = ["rustc"] }"#.into(),
            plugins_extra: String::new(),
            staging_smoke: None,
            production_health: None,
        };
        q.write_config("1.0.0");
        q
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("slipway.toml")
    }

    pub fn config_text(&self, version: &str) -> String {
        let (s, p) = (self.staging, self.production);
        let staging_smoke = self.staging_smoke.clone().unwrap_or_else(|| {
            format!(r#"{{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{s}/", retries = 30, retry_delay_ms = 100 }} }}"#)
        });
        let production_health = self.production_health.clone().unwrap_or_else(|| {
            format!(r#"{{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{p}/healthz" }}, interval = "500ms", healthy_after = 2, unhealthy_after = 2, bake = "5s" }}"#)
        });
        format!(
            r#"[agent]
state_dir = "state"
stop_grace = "2s"
listen = "127.0.0.1:0"

[plugins.command]
source = "builtin:command"
timeout = "2m"
grants = {cg}

[plugins.http-check]
source = "builtin:http-check"
grants = {{ http = ["127.0.0.1:*"] }}

[apps.hello]
version = "{version}"
source = {{ path = "app" }}
keep_releases = 2
build = {{ plugin = "command", params = {{ run = ["rustc --edition 2024 src/main.rs -o hello"] }} }}

[apps.hello.environments.staging]
run = {{ command = "./hello", env = {{ PORT = "{s}" }} }}
smoke = {staging_smoke}
health = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{s}/healthz" }}, interval = "500ms", healthy_after = 2, bake = "1s" }}
{se}

[apps.hello.environments.production]
promote_from = "staging"
run = {{ command = "./hello", env = {{ PORT = "{p}" }} }}
smoke = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{p}/", retries = 30, retry_delay_ms = 100 }} }}
health = {production_health}
{pe}
{plugins_extra}"#,
            plugins_extra = self.plugins_extra,
            se = self.staging_extra,
            pe = self.production_extra,
            cg = self.command_grants,
        )
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

    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&[])
    }

    /// The agent with extra global arguments, e.g. `--log-format json`.
    pub fn start_agent_with(&self, extra: &[&str]) -> Agent {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(extra)
            .args(["agent", "-c"])
            .arg(self.config())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the agent");
        Agent { child, log }
    }

    pub fn journal(&self) -> Journal {
        Journal::open(&self.dir.path().join("state/journal.db")).unwrap()
    }
}

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn terminate(mut self) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
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

pub fn wait_for(what: &str, agent: &Agent, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out waiting for {what}\n--- agent log ---\n{}",
        agent.log()
    );
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
