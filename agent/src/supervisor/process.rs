//! The operating-system side of supervision: resolving a command, spawning it
//! into its own process group with its output appended to a log file, and
//! signalling that group. No state and no policy live here; the restart loop
//! and the bookkeeping are in `mod.rs`.
//!
//! Process-group signals are guarded: a group id of 0 or 1 (or our own group)
//! is never signalled, because `kill(0, ..)` and `kill(-1, ..)` would hit the
//! agent itself or every process it may signal.

use super::{RunSpec, SupervisorError};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Where `spec.command` points: absolute as is, with a `/` relative to
/// `spec.cwd`, otherwise the first executable match in the child's PATH.
pub(super) fn resolve(app: &str, env: &str, spec: &RunSpec) -> Result<PathBuf, SupervisorError> {
    let not_found = || SupervisorError::NotFound {
        app: app.to_string(),
        env: env.to_string(),
        command: spec.command.clone(),
    };
    if spec.command.is_empty() {
        return Err(not_found());
    }
    if spec.command.contains('/') {
        let path = Path::new(&spec.command);
        return Ok(if path.is_absolute() {
            path.to_path_buf()
        } else {
            // `./web` names RELEASE/web, in logs and errors too.
            let relative: PathBuf = path
                .components()
                .filter(|c| *c != std::path::Component::CurDir)
                .collect();
            spec.cwd.join(relative)
        });
    }
    let search = child_path(spec).ok_or_else(not_found)?;
    std::env::split_paths(&search)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| {
            let dir = if dir.is_absolute() {
                dir
            } else {
                spec.cwd.join(dir)
            };
            dir.join(&spec.command)
        })
        .find(|candidate| is_executable(candidate))
        .ok_or_else(not_found)
}

/// The PATH the child will see: the spec's own if it sets one, else ours.
fn child_path(spec: &RunSpec) -> Option<OsString> {
    match spec.env.get("PATH") {
        Some(p) => Some(p.into()),
        None => std::env::var_os("PATH"),
    }
}

/// A regular file with at least one execute bit.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The program exists and is an executable file (spawning it would say
/// only "No such file or directory" or "Permission denied").
pub(super) fn check_program(app: &str, env: &str, program: &Path) -> Result<(), SupervisorError> {
    let problem = match std::fs::metadata(program) {
        Ok(m) if !m.is_file() => io::Error::new(io::ErrorKind::InvalidInput, "not a file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not executable (no x permission bit)",
        ),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            io::Error::new(io::ErrorKind::NotFound, "the file is missing")
        }
        Err(e) => e,
    };
    Err(SupervisorError::Spawn {
        app: app.to_string(),
        env: env.to_string(),
        command: program.to_path_buf(),
        source: problem,
    })
}

/// The working directory exists and is a directory.
pub(super) fn check_cwd(app: &str, env: &str, spec: &RunSpec) -> Result<(), SupervisorError> {
    match std::fs::metadata(&spec.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SupervisorError::Cwd {
                app: app.to_string(),
                env: env.to_string(),
                cwd: spec.cwd.clone(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Err(source) => {
            return Err(SupervisorError::Cwd {
                app: app.to_string(),
                env: env.to_string(),
                cwd: spec.cwd.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Spawn `program` as described by `spec`, in a new process group, with a
/// header line in the log. Returns the child and its pid (= its pgid).
pub(super) fn spawn(
    app: &str,
    env: &str,
    spec: &RunSpec,
    program: &Path,
) -> Result<(Child, u32), SupervisorError> {
    check_cwd(app, env, spec)?;
    let log_err = |source| SupervisorError::Log {
        app: app.to_string(),
        env: env.to_string(),
        path: spec.log_file.clone(),
        source,
    };
    if let Some(parent) = spec.log_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(log_err)?;
    }
    let needs_newline = !ends_with_newline(&spec.log_file);
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .map_err(log_err)?;
    let stderr = stdout.try_clone().map_err(log_err)?;

    let mut cmd = Command::new(program);
    cmd.args(&spec.args).env_clear();
    for var in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);

    // The header is written by the child itself, between fork and exec, so it
    // carries the real pid and always precedes the program's first output.
    let mut prefix = Vec::new();
    if needs_newline {
        prefix.push(b'\n');
    }
    prefix.extend_from_slice(format!("--- started {} pid ", program.display()).as_bytes());
    let at = crate::datetime::fmt_time(crate::store::now_ms());
    let suffix = format!(" at {at} UTC ---\n").into_bytes();
    // SAFETY: the closure only calls getpid, write(2) and signal(2), all
    // async-signal-safe, on memory allocated before the fork; it allocates
    // nothing and cannot panic.
    unsafe {
        cmd.pre_exec(move || {
            // The agent ignores SIGXFSZ (see main.rs); the app gets the
            // default, as if started by hand.
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            write_header(&prefix, &suffix);
            Ok(())
        });
    }

    let spawn_err = |source| SupervisorError::Spawn {
        app: app.to_string(),
        env: env.to_string(),
        command: program.to_path_buf(),
        source,
    };
    let child = cmd.spawn().map_err(spawn_err)?;
    let pid = child
        .id()
        .ok_or_else(|| spawn_err(io::Error::other("the process has no pid")))?;
    Ok((child, pid))
}

/// Whether the file is missing, empty or ends with a newline (so the next
/// header starts on its own line).
fn ends_with_newline(path: &Path) -> bool {
    let Ok(mut file) = File::open(path) else {
        return true;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return true;
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1)).is_err()
        || file.read_exact(&mut last).is_err()
        || last[0] == b'\n'
}

/// Runs in the forked child: `prefix`, our pid, `suffix`, to stdout.
fn write_header(prefix: &[u8], suffix: &[u8]) {
    let mut digits = [0u8; 20];
    let mut n = std::process::id();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for part in [prefix, &digits[i..], suffix] {
        write_all_raw(part);
    }
}

/// write(2) to fd 1 until done or an error (which is ignored: a header is
/// not worth failing the start for).
fn write_all_raw(mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice for its length.
        let written = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        let Ok(written) = usize::try_from(written) else {
            return;
        };
        if written == 0 {
            return;
        }
        buf = buf.get(written..).unwrap_or_default();
    }
}

/// The pgid as `pid_t`, if it is one we may signal: > 1 and not our own group.
fn group_id(pgid: u32) -> Option<libc::pid_t> {
    let id = libc::pid_t::try_from(pgid).ok().filter(|&id| id > 1)?;
    // SAFETY: getpgrp has no preconditions.
    let own = unsafe { libc::getpgrp() };
    (id != own).then_some(id)
}

/// Send `signal` to the whole process group `pgid`.
pub(super) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let id = group_id(pgid).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        )
    })?;
    // SAFETY: kill has no memory-safety preconditions; id > 1, so -id names
    // exactly one process group.
    if unsafe { libc::kill(-id, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether any process (zombies included) is still in group `pgid`.
pub(super) fn group_exists(pgid: u32) -> bool {
    match signal_group(pgid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}
