//! The API token: 32 random bytes, hex, in `state_dir/api-token` (0600).
//! Created at the first start and kept across restarts, so a script or a
//! Prometheus `credentials_file` set up once keeps working. Rotate it by
//! deleting the file and restarting the agent.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("api-token")
}

/// The token in `state_dir`, created if there is none. A token file others
/// can read is refused: anyone who can read it can roll production back.
pub fn ensure_token(state_dir: &Path) -> Result<String, String> {
    let file = token_file(state_dir);
    match read_token(state_dir) {
        Ok(token) => return Ok(token),
        Err(e) if file.exists() => return Err(e),
        Err(_) => {}
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom for the API token: {e}"))?;
    let token = hex::encode(bytes);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()
        });
    match created {
        Ok(()) => Ok(token),
        // Another process created it in the meantime: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(state_dir),
        Err(e) => Err(format!("creating {}: {e}", file.display())),
    }
}

/// The token in `state_dir`, for the CLI (and the agent at start).
pub fn read_token(state_dir: &Path) -> Result<String, String> {
    let file = token_file(state_dir);
    let meta = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            file.display(),
            meta.permissions().mode() & 0o777,
            file.display()
        ));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{} holds no usable token; delete it and restart the agent",
            file.display()
        ));
    }
    Ok(token)
}

/// Write a small file by rename, so a reader never sees half of it.
pub(crate) fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(token_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_token(dir.path()).unwrap(), token);
        assert_eq!(read_token(dir.path()).unwrap(), token);
    }

    #[test]
    fn a_token_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_token(dir.path()).unwrap();
        let file = token_file(dir.path());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ensure_token(dir.path()).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
