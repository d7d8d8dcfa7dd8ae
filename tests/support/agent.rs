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
