//! Shared pieces of the end-to-end tests: fixture plugins, the test agent
//! (`agent`), the typed config (`config`), the scripted HTTP server
//! (`http`), the quickstart under a real agent (`quickstart`), and step
//! requests with a real release directory.

pub mod agent;
pub mod config;
pub mod examples;
pub mod http;
pub mod quickstart;

pub use http::HttpServer;

use slipway::runtime::{
    DirGrant, Grants, HostPattern, Limits, Plugin, PluginSource, Redactor, ReleaseRef, Runtime,
    RuntimeConfig, StepContext, StepInput, StepKind, StepLabels, StepOutcome, StepRequest, builtin,
};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A component built by `agent/build.rs` (fixtures: `fixture("hostile")`).
pub fn wasm(file_stem: &str) -> PathBuf {
    Path::new(builtin::BUILD_DIR).join(format!("{file_stem}.wasm"))
}

pub fn fixture(name: &str) -> PathBuf {
    wasm(&format!("slipway_fixture_{}", name.replace('-', "_")))
}

pub fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig::default()).expect("runtime")
}

pub async fn load_file(rt: &Runtime, path: &Path) -> Plugin {
    rt.load(&PluginSource::File(path.to_path_buf()), None)
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

pub async fn load_builtin(rt: &Runtime, name: &str) -> Plugin {
    rt.load(&PluginSource::Builtin(name.into()), None)
        .await
        .unwrap_or_else(|e| panic!("loading builtin {name}: {e}"))
}

pub fn patterns(list: &[&str]) -> Vec<HostPattern> {
    list.iter()
        .map(|p| HostPattern::parse(p).unwrap())
        .collect()
}

/// A step with a real (temporary) release directory, granted read-only.
pub struct Step {
    pub release: tempfile::TempDir,
    pub request: StepRequest,
}

impl Step {
    pub fn new(kind: StepKind, params: serde_json::Value) -> Self {
        let release = tempfile::tempdir().expect("tempdir");
        let dir = release.path().canonicalize().unwrap();
        let request = StepRequest {
            kind,
            input: StepInput::Step(StepContext {
                app: "web".into(),
                environment: Some("staging".into()),
                release: ReleaseRef {
                    version: "1.0.0".into(),
                    id: "1.0.0-test".into(),
                    dir: dir.clone(),
                },
                previous_release: None,
                params,
                attempt: 1,
            }),
            grants: Grants {
                dirs: vec![DirGrant {
                    path: dir,
                    write: false,
                }],
                ..Default::default()
            },
            limits: Limits {
                wall_time: Duration::from_secs(10),
                ..Limits::default()
            },
            secrets: BTreeMap::new(),
            redactor: Redactor::default(),
            labels: StepLabels {
                plugin: "test".into(),
                kind: kind.to_string(),
                app: "web".into(),
                environment: "staging".into(),
                deployment: "d-test".into(),
            },
        };
        Self { release, request }
    }

    pub fn dir(&self) -> PathBuf {
        self.release.path().canonicalize().unwrap()
    }

    pub fn grants(mut self, f: impl FnOnce(&mut Grants)) -> Self {
        f(&mut self.request.grants);
        self
    }

    pub fn params(mut self, params: serde_json::Value) -> Self {
        if let StepInput::Step(ctx) = &mut self.request.input {
            ctx.params = params;
        }
        self
    }

    pub fn limits(mut self, f: impl FnOnce(&mut Limits)) -> Self {
        f(&mut self.request.limits);
        self
    }

    pub fn secret(mut self, name: &str, value: &str) -> Self {
        self.request.secrets.insert(name.into(), value.into());
        self.request.redactor = Redactor::new(
            self.request
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self
    }

    pub async fn run(&self, plugin: &Plugin) -> StepOutcome {
        plugin.run(&self.request).await
    }
}

/// A port on 127.0.0.1 that nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A port for an app the agent will start, free now and kept out of the
/// kernel's ephemeral range. A port from `bind(0)` comes from that range, so
/// between choosing it and the app binding it, any outgoing connection of a
/// test running beside it (every health check opens one) may take it as its
/// local port, and the app then fails with "address already in use". Ports
/// below the range are never handed out that way; a process-wide counter keeps
/// the tests of one binary apart, and the pid spreads successive binaries.
pub fn app_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let span = 8000.min(below.saturating_sub(10_000)).max(1);
    let base = below - span;
    let start = std::process::id() as usize * 131;
    for _ in 0..span {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    closed_port()
}

/// Run the real `slipway` binary: (exit code, stdout, stderr).
pub fn slipway(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("running slipway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
