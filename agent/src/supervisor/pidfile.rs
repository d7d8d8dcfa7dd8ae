//! Who a supervised process is, written where the next agent finds it:
//! `<run_dir>/<app>.<env>.<release>.pid` holds the pid with the process's
//! start time (clock ticks after boot, `/proc/PID/stat` field 22) and the
//! boot id. A pid names the same process only while both match: after a
//! reboot or once the pid is reused, the file names nobody, and nobody is
//! signalled or adopted because of it (an audit found an unrelated process
//! killed through a bare pid left over in a pidfile).

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pidfile {
    pub pid: u32,
    pub start_time: u64,
    pub boot_id: String,
    pub app: String,
    pub env: String,
    pub release: String,
    /// The release's own port (`traffic`), if it has one.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Pidfile {
    /// The record of `pid`, now (`None` if it is already gone).
    pub fn of(pid: u32, app: &str, env: &str, release: &str, port: Option<u16>) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
            boot_id: boot_id()?,
            app: app.to_string(),
            env: env.to_string(),
            release: release.to_string(),
            port,
        })
    }

    /// Whether the process it names still runs: same boot, same start
    /// time, not a zombie.
    pub fn alive(&self) -> bool {
        boot_id().is_some_and(|b| b == self.boot_id)
            && stat(self.pid).is_some_and(|s| s.start_time == self.start_time && s.state != 'Z')
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|_| {
            if text.trim().parse::<u32>().is_ok() {
                "a bare pid from an older agent (nothing says it is still the same process)".into()
            } else {
                "not a pidfile".into()
            }
        })
    }

    /// Write it atomically (temp file, then rename), creating `run_dir`.
    pub fn write(&self, run_dir: &Path, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(run_dir)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, serde_json::to_vec(self).expect("pidfiles serialize"))?;
        std::fs::rename(&tmp, path)
    }
}

pub(super) struct Stat {
    pub state: char,
    pub pgrp: u32,
    pub start_time: u64,
}

/// Fields 3 (state), 5 (process group) and 22 (start time) of
/// `/proc/PID/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub(super) fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// When `pid` started, in clock ticks after boot.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// This boot's id.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfile_names_its_process_only_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let record = Pidfile::of(child.id(), "web", "prod", "1.0.0-1", Some(4100)).unwrap();
        let path = dir.path().join("web.prod.1.0.0-1.pid");
        record.write(dir.path(), &path).unwrap();
        let read = Pidfile::read(&path).unwrap();
        assert_eq!(read, record);
        assert!(read.alive());
        // The same pid with another start time is another process.
        let reused = Pidfile {
            start_time: read.start_time + 1,
            ..read.clone()
        };
        assert!(!reused.alive());
        let other_boot = Pidfile {
            boot_id: "another-boot".into(),
            ..read.clone()
        };
        assert!(!other_boot.alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!read.alive());
        std::fs::write(&path, "1234\n").unwrap();
        assert!(Pidfile::read(&path).unwrap_err().contains("bare pid"));
    }
}
