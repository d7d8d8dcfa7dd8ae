//! The real `slipway agent` under test: one builder for every way a test
//! starts it (another binary, another user, faults injected, extra flags or
//! environment), and the handle that stops it and reads its log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Crash injection for the crash matrix (`slipway::fault`).
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Number the journal's transitions in the log, crash at none.
    Count,
    /// Exit abruptly right after transition `n`.
    CrashAfter(u64),
}

/// How to start one agent. Its stderr goes to a log file beside the
/// config (`agent-N.log`, or `NAME-N.log`, N counting the test binary's
/// starts); stdout is discarded.
pub struct AgentBuilder {
    n: usize,
    program: PathBuf,
    config: PathBuf,
    log: PathBuf,
    global_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    fault: Option<Fault>,
    setup: Vec<Setup>,
}

/// A change to the agent's `Command` before it starts.
type Setup = Box<dyn FnOnce(&mut Command)>;

impl AgentBuilder {
    /// `slipway agent -c CONFIG`, with the binary cargo built.
    pub fn new(config: &Path) -> Self {
        adopt_orphans();
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let dir = config.parent().expect("the config is in a directory");
        Self {
            n,
            program: PathBuf::from(env!("CARGO_BIN_EXE_slipway")),
            config: config.to_path_buf(),
            log: dir.join(format!("agent-{n}.log")),
            global_args: Vec::new(),
            env: Vec::new(),
            fault: None,
            setup: Vec::new(),
        }
    }

    /// Run this binary instead (a copy elsewhere, an older build).
    pub fn program(mut self, program: &Path) -> Self {
        self.program = program.to_path_buf();
        self
    }

    /// Log to `NAME-N.log` beside the config.
    pub fn log_name(mut self, name: &str) -> Self {
        self.log = self.log.with_file_name(format!("{name}-{}.log", self.n));
        self
    }

    /// Flags before the subcommand, e.g. `--log-format json`.
    pub fn global_args(mut self, args: &[&str]) -> Self {
        self.global_args.extend(args.iter().map(OsString::from));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Anything else about the process (its user, its umask...).
    pub fn with(mut self, setup: impl FnOnce(&mut Command) + 'static) -> Self {
        self.setup.push(Box::new(setup));
        self
    }

    pub fn spawn(self) -> Agent {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.global_args)
            .args(["agent", "-c"])
            .arg(&self.config)
            // A fault only when this test asks for one.
            .env_remove(slipway::fault::ENABLE_VAR)
            .env_remove(slipway::fault::CRASH_VAR)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("creating the agent's log"));
        match self.fault {
            None => {}
            Some(Fault::Count) => {
                cmd.env(slipway::fault::ENABLE_VAR, "1");
            }
            Some(Fault::CrashAfter(n)) => {
                cmd.env(slipway::fault::ENABLE_VAR, "1")
                    .env(slipway::fault::CRASH_VAR, n.to_string());
            }
        }
        for setup in self.setup {
            setup(&mut cmd);
        }
        let child = cmd.spawn().expect("starting the agent");
        Agent {
            child,
            log: self.log,
        }
    }
}

/// A running agent; killed (SIGKILL) when dropped.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait for it to exit.
    pub fn terminate(mut self) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }

    /// SIGINT (Ctrl-C): the agent stops its apps and the traffic layer.
    pub fn interrupt(mut self) {
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let _ = self.child.wait();
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Wait for an agent that should exit by itself: (exit code, its log).
    pub fn wait_exit(mut self, timeout: Duration) -> (i32, String) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent did not exit in {timeout:?}\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Apps and the traffic layer outlive a stopped agent by design. So that a
/// test run leaves none of them behind, the test process becomes the
/// subreaper of everything it starts (an app whose agent exited is
/// reparented to it, not to init), and at exit it kills every child left,
/// with its process group.
fn adopt_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        extern "C" fn kill_children() {
            let me = std::process::id().to_string();
            let Ok(entries) = std::fs::read_dir("/proc") else {
                return;
            };
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<i32>().ok())
                else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
                if ppid.as_deref() == Some(me.as_str()) && pid > 1 {
                    unsafe {
                        libc_kill(-pid, 9);
                        libc_kill(pid, 9);
                    }
                }
            }
        }
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an int; atexit
        // takes a function that runs once at exit and touches only /proc.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
            libc::atexit(kill_children);
        }
    });
}

/// SIGKILL every process group a state dir's pidfiles name, and its
/// traffic layer (`run/proxy-pid`).
pub fn reap(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("run")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pid") && !path.ends_with("proxy-pid") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let pid = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["pid"].as_i64())
            .or_else(|| text.trim().parse().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            let pid = pid as i32;
            unsafe {
                libc_kill(-pid, 9);
                libc_kill(pid, 9);
            }
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Poll `ok` every 100 ms; on timeout, fail with the agent's log.
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
