//! Run allowlisted programs outside the sandbox (compilers, service
//! managers). Only programs in the plugin's `exec` grant run; anything else
//! is refused with an error naming the program.

use crate::bindings::slipway::plugin::host::{self, ExecRequest};

pub use crate::bindings::slipway::plugin::host::ExecOutput;

/// A program to run, built up then [`Command::run`].
#[derive(Debug, Clone)]
pub struct Command {
    request: ExecRequest,
}

impl Command {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            request: ExecRequest {
                program: program.into(),
                args: Vec::new(),
                cwd: None,
                env: Vec::new(),
                timeout_ms: None,
            },
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.request.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Working directory; must lie inside a granted directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.request.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.push((key.into(), value.into()));
        self
    }

    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.request.timeout_ms = Some(ms);
        self
    }

    /// Run to completion. `Err` means it could not run (denied, not found);
    /// a non-zero exit is an `Ok` whose [`ExecOutput::success`] is false.
    pub fn run(&self) -> Result<ExecOutput, String> {
        host::exec(&self.request)
    }
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// The last `max_lines` lines of stderr then stdout, for error messages.
    pub fn tail(&self, max_lines: usize) -> String {
        let mut text = String::from_utf8_lossy(&self.stdout).into_owned();
        let err = String::from_utf8_lossy(&self.stderr);
        if !err.trim().is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&err);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }

    /// "exit code 3", "killed by a signal" or "timed out".
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.exit_code) {
            (true, _) => "timed out".to_string(),
            (false, Some(code)) => format!("exit code {code}"),
            (false, None) => "killed by a signal".to_string(),
        }
    }
}
