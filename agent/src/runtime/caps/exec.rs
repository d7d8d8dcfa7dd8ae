//! The `exec` capability: run an allowlisted program outside the sandbox.
//!
//! Why it is shaped this way: a build step must run a compiler, and a deploy
//! step may need `systemctl`, but a plugin must not get a shell by accident.
//! So the program must be named in the grant, the working directory must lie
//! in a granted directory, the environment starts empty (plus `PATH` and the
//! granted env; `LD_*` is refused), the time is capped by the step's own
//! deadline, output is capped (tail kept), and the whole process group is
//! killed on timeout or when the step is abandoned.

use crate::runtime::caps::log::{Level, Source, StepLog};
use crate::runtime::state::Setup;
use slipway_config::grants::{self, Grants};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a plugin asked to run (the WIT `exec-request`, host side).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout_ms: Option<u32>,
}

/// What came back (the WIT `exec-output`, host side).
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub truncated: bool,
}

/// Per-step state of the capability.
#[derive(Debug, Clone)]
pub struct Exec {
    pub grants: Arc<Grants>,
    /// Where programs run when the request names no cwd (the release dir).
    pub default_cwd: Option<PathBuf>,
    pub deadline: Instant,
    pub max_output_bytes: usize,
    pub log: StepLog,
}

/// `PATH` for child processes: the agent's own, so `cargo` resolves as the
/// operator expects, or a conservative default.
fn child_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string())
}

impl Exec {
    /// The step's grants and limits; programs run in the release dir by
    /// default, and never past the step's deadline.
    pub(crate) fn for_step(setup: &Setup<'_>) -> Self {
        Self {
            grants: Arc::new(setup.request.grants.clone()),
            default_cwd: setup.release_dir(),
            deadline: setup.deadline,
            max_output_bytes: setup.request.limits.max_exec_output_bytes,
            log: setup.log.clone(),
        }
    }

    /// The host function `exec(request)`: [`Exec::run`], its error redacted
    /// (it may quote the arguments, which may hold a secret).
    pub async fn serve(&self, request: ExecRequest) -> Result<ExecOutput, String> {
        self.run(request)
            .await
            .map_err(|e| self.log.redactor().redact(&e))
    }

    pub async fn run(&self, req: ExecRequest) -> Result<ExecOutput, String> {
        let shown = std::iter::once(req.program.as_str())
            .chain(req.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        match self.run_checked(&req).await {
            Ok(out) => {
                let status = match (out.timed_out, out.exit_code) {
                    (true, _) => "timed out".to_string(),
                    (false, Some(c)) => format!("exit code {c}"),
                    (false, None) => "killed by a signal".to_string(),
                };
                self.log.push(
                    if out.exit_code == Some(0) {
                        Level::Info
                    } else {
                        Level::Warn
                    },
                    Source::Host,
                    &format!("exec `{shown}`: {status}"),
                    Vec::new(),
                );
                Ok(out)
            }
            Err(e) => {
                self.log.push(
                    Level::Warn,
                    Source::Host,
                    &format!("exec `{shown}`: {e}"),
                    Vec::new(),
                );
                Err(e)
            }
        }
    }

    async fn run_checked(&self, req: &ExecRequest) -> Result<ExecOutput, String> {
        if !self.grants.allows_exec(&req.program) {
            return Err(format!(
                "denied: `{}` is not in this plugin's exec grant ({})",
                req.program,
                if self.grants.exec.is_empty() {
                    "nothing is granted".to_string()
                } else {
                    format!("granted: {}", self.grants.exec.join(", "))
                }
            ));
        }
        let cwd = self.cwd(req.cwd.as_deref())?;
        for (key, _) in &req.env {
            if key.starts_with("LD_")
                || key.starts_with("DYLD_")
                || key.is_empty()
                || key.contains('=')
            {
                return Err(format!(
                    "denied: environment variable `{key}` may not be set"
                ));
            }
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let timeout = match req.timeout_ms {
            Some(ms) => remaining.min(Duration::from_millis(ms.into())),
            None => remaining,
        };

        let mut command = tokio::process::Command::new(&req.program);
        command
            .args(&req.args)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", child_path())
            .envs(self.grants.env.iter())
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not start `{}`: {e}", req.program))?;
        let group = ProcessGroup(child.id());

        let max = self.max_output_bytes;
        let stdout = tokio::spawn(read_tail(child.stdout.take(), max));
        let stderr = tokio::spawn(read_tail(child.stderr.take(), max));
        let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => (
                status.map_err(|e| format!("waiting for `{}`: {e}", req.program))?,
                false,
            ),
            Err(_) => {
                group.kill();
                let status = child
                    .wait()
                    .await
                    .map_err(|e| format!("waiting for `{}`: {e}", req.program))?;
                (status, true)
            }
        };
        // Grandchildren may still hold the pipes open; don't wait on them.
        group.kill();
        let (stdout, out_cut) = stdout.await.unwrap_or_default();
        let (stderr, err_cut) = stderr.await.unwrap_or_default();
        Ok(ExecOutput {
            exit_code: status.code(),
            stdout,
            stderr,
            timed_out,
            truncated: out_cut || err_cut,
        })
    }

    /// The directory to run in: absolute, inside a granted directory.
    fn cwd(&self, requested: Option<&str>) -> Result<PathBuf, String> {
        let dir = match (requested, &self.default_cwd) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(dir)) => dir.clone(),
            (None, None) => return Err("no working directory: pass cwd".to_string()),
        };
        let normalized = grants::normalize(&dir)
            .ok_or_else(|| format!("cwd `{}` must be an absolute path", dir.display()))?;
        if self.grants.dir_containing(&normalized).is_none() {
            return Err(format!(
                "denied: cwd `{}` is outside the directories granted to this plugin",
                dir.display()
            ));
        }
        if !Path::new(&normalized).is_dir() {
            return Err(format!("cwd `{}` is not a directory", dir.display()));
        }
        Ok(normalized)
    }
}

/// Kills a child's whole process group (it was started as a group leader).
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            // SAFETY: plain syscall on a pgid we created; failure (already
            // gone) is harmless.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read a stream to its end, keeping at most `max` bytes (the tail).
async fn read_tail(stream: Option<impl AsyncRead + Unpin>, max: usize) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let mut kept = std::collections::VecDeque::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend(&buf[..n]);
                if kept.len() > max {
                    let extra = kept.len() - max;
                    kept.drain(..extra);
                    truncated = true;
                }
            }
        }
    }
    (kept.into(), truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_config::grants::DirGrant;
    use slipway_config::redact::Redactor;

    fn exec(grants: Grants, max: usize) -> Exec {
        Exec {
            grants: Arc::new(grants),
            default_cwd: Some(std::env::temp_dir()),
            deadline: Instant::now() + Duration::from_secs(10),
            max_output_bytes: max,
            log: StepLog::new(Default::default(), Redactor::default(), 10_000),
        }
    }

    fn req(program: &str, args: &[&str]) -> ExecRequest {
        ExecRequest {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: Vec::new(),
            timeout_ms: None,
        }
    }

    fn tmp_grant() -> Grants {
        Grants {
            exec: vec!["sh".into()],
            dirs: vec![DirGrant {
                path: std::env::temp_dir(),
                write: false,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn runs_granted_program_and_keeps_output_tail() {
        let out = exec(tmp_grant(), 8)
            .run(req("sh", &["-c", "printf 0123456789; exit 3"]))
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, b"23456789");
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn refuses_ungranted_programs_dirs_and_env() {
        let e = exec(tmp_grant(), 100);
        assert!(
            e.run(req("ls", &[]))
                .await
                .unwrap_err()
                .contains("exec grant")
        );
        let mut r = req("sh", &["-c", "true"]);
        r.cwd = Some("/etc".into());
        assert!(
            e.run(r)
                .await
                .unwrap_err()
                .contains("outside the directories")
        );
        let mut r = req("sh", &["-c", "true"]);
        r.env = vec![("LD_PRELOAD".into(), "/x.so".into())];
        assert!(e.run(r).await.unwrap_err().contains("LD_PRELOAD"));
    }

    #[tokio::test]
    async fn kills_the_process_group_on_timeout() {
        let mut r = req("sh", &["-c", "sleep 30 & sleep 30"]);
        r.timeout_ms = Some(200);
        let started = Instant::now();
        let out = exec(tmp_grant(), 100).run(r).await.unwrap();
        assert!(out.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
