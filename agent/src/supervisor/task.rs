//! The task that owns one supervised process: waits for it, restarts it
//! with backoff when it exits on its own, stops it (or leaves it running)
//! when told to.
//!
//! A process this agent started is a `Child` it can wait for. One a
//! previous agent left running is not this agent's child: its exit is seen
//! through a pidfd (readable once the process has exited), and whoever
//! inherited it reaps it.

use super::process::{self, group_exists, signal_group};
use super::{BACKOFF_MAX, BACKOFF_RESET, BACKOFF_START};
use super::{Ending, Key, Pidfile, ProcessStatus, RunSpec, Slot, lock};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A supervised process, however it came to be.
pub(super) enum Running {
    Child(Child),
    /// Started by an earlier agent: watched through its pidfd.
    Adopted(AsyncFd<OwnedFd>),
}

impl Running {
    /// Watch a process a previous agent started (`None` if it is gone or
    /// cannot be watched).
    pub fn adopted(record: &Pidfile) -> Option<Self> {
        let pid = libc::pid_t::try_from(record.pid).ok()?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            tracing::warn!(pid, error = %std::io::Error::last_os_error(), "cannot watch the process (pidfd_open)");
            return None;
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pid could have been reused between the check and pidfd_open:
        // check again now that the pidfd pins the process.
        if !record.alive() {
            return None;
        }
        // SAFETY: the AsyncFd owns the pidfd; nothing else closes or
        // replaces it while it is registered.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .ok()
            .map(Running::Adopted)
    }

    /// Wait for the process to exit; how it ended.
    async fn wait(&mut self) -> String {
        match self {
            Running::Child(child) => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            },
            Running::Adopted(fd) => match fd.readable().await {
                Ok(_) => "exited (adopted: its exit status went to its new parent)".into(),
                Err(e) => format!("cannot watch it: {e} (fd {})", fd.get_ref().as_raw_fd()),
            },
        }
    }
}

/// Everything the supervising task of one (app, env, release) needs.
pub(super) struct Task {
    pub key: Key,
    pub generation: u64,
    pub spec: RunSpec,
    pub program: PathBuf,
    pub pidfile: PathBuf,
    pub run_dir: PathBuf,
    pub grace: Duration,
    pub slots: Arc<Mutex<HashMap<Key, Slot>>>,
}

impl Task {
    /// Keep the process running until told to end (or the sender is dropped: stop).
    pub async fn run(self, mut running: Running, mut pid: u32, mut end: oneshot::Receiver<Ending>) {
        let (app, env, release) = (
            self.key.0.as_str(),
            self.key.1.as_str(),
            self.key.2.as_str(),
        );
        let mut backoff = BACKOFF_START;
        let mut started = Instant::now();
        loop {
            let how = tokio::select! {
                how = running.wait() => how,
                ending = &mut end => {
                    if ending == Ok(Ending::Leave) {
                        tracing::info!(app, env, release, pid, "left running for the next agent");
                        return;
                    }
                    terminate(app, env, release, running, pid, self.grace).await;
                    self.remove_pidfile(pid);
                    return;
                }
            };
            if group_exists(pid) {
                // Its leftovers would hold the ports the restart needs.
                tracing::info!(
                    app,
                    env,
                    release,
                    pid,
                    "killing what is left of the exited process's group"
                );
                let _ = signal_group(pid, libc::SIGKILL);
            }
            if started.elapsed() >= BACKOFF_RESET {
                backoff = BACKOFF_START;
            }
            tracing::warn!(app, env, release, pid, status = %how, backoff_ms = backoff.as_millis() as u64,
                "app process exited; restarting");
            self.update(|s| {
                s.pid = None;
                s.last_exit = Some(how);
            });
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut end => {
                        self.remove_pidfile(pid);
                        return;
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let respawn = process::check_cwd(app, env, &self.spec)
                    .and_then(|()| process::check_program(app, env, &self.program))
                    .and_then(|()| process::spawn(app, env, &self.spec, &self.program));
                match respawn {
                    Ok((new_child, new_pid)) => {
                        (running, pid) = (Running::Child(new_child), new_pid);
                        started = Instant::now();
                        let recorded = Pidfile::of(pid, app, env, release, self.spec.port)
                            .ok_or_else(|| std::io::Error::other("the process is already gone"))
                            .and_then(|r| r.write(&self.run_dir, &self.pidfile));
                        if let Err(e) = recorded {
                            tracing::warn!(app, env, release, pid, error = %e, "cannot write pidfile");
                        }
                        tracing::info!(app, env, release, pid, "app process restarted");
                        self.update(|s| {
                            s.pid = Some(pid);
                            s.restarts = s.restarts.saturating_add(1);
                        });
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(app, env, release, error = %e, backoff_ms = backoff.as_millis() as u64,
                            "cannot restart app process");
                        self.update(|s| s.last_exit = Some(format!("could not restart: {e}")));
                    }
                }
            }
        }
    }

    /// Remove the pidfile if it still names our process (a newer start may own it).
    fn remove_pidfile(&self, pid: u32) {
        if Pidfile::read(&self.pidfile).is_ok_and(|p| p.pid == pid)
            && let Err(e) = std::fs::remove_file(&self.pidfile)
        {
            tracing::warn!(pidfile = %self.pidfile.display(), error = %e, "cannot remove pidfile");
        }
    }

    /// Change our slot's status, if the slot is still ours.
    fn update(&self, change: impl FnOnce(&mut ProcessStatus)) {
        if let Some(slot) = lock(&self.slots).get_mut(&self.key)
            && slot.generation == self.generation
        {
            change(&mut slot.status);
        }
    }
}

/// SIGTERM the group, wait up to `grace` for it to empty, SIGKILL what is
/// left, reap the leader (if it is ours).
pub(super) async fn terminate(
    app: &str,
    env: &str,
    release: &str,
    mut running: Running,
    pid: u32,
    grace: Duration,
) {
    if let Err(e) = signal_group(pid, libc::SIGTERM)
        && e.raw_os_error() != Some(libc::ESRCH)
    {
        tracing::warn!(app, env, release, pid, error = %e, "cannot send SIGTERM");
    }
    let deadline = Instant::now() + grace;
    let mut exited = tokio::time::timeout_at(deadline, running.wait()).await.ok();
    if exited.is_some() {
        // The leader is gone; give the rest of its group the remaining grace.
        while group_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if group_alive(pid) {
        tracing::warn!(
            app,
            env,
            release,
            pid,
            grace_ms = grace.as_millis() as u64,
            "app process did not stop within the grace period; sending SIGKILL"
        );
        if let Err(e) = signal_group(pid, libc::SIGKILL) {
            tracing::warn!(app, env, release, pid, error = %e, "cannot send SIGKILL");
        }
    }
    if exited.is_none() {
        exited = Some(running.wait().await);
    }
    if let Some(status) = exited {
        tracing::info!(app, env, release, pid, status = %status, "app process stopped");
    }
}

/// Whether the group still has a process that is not a zombie. An adopted
/// leader that exited stays a zombie until its new parent reaps it (a
/// container's init may never do so); it holds no port and runs nothing.
fn group_alive(pgid: u32) -> bool {
    if !group_exists(pgid) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .and_then(super::pidfile::stat)
            .is_some_and(|s| s.state != 'Z' && s.pgrp == pgid)
    })
}
