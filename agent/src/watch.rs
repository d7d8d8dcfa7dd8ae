//! Watches the config file: editing it is how a deploy starts.
//!
//! It watches the file's *directory* (with `notify`), not the file, because
//! editors save by writing a new file and renaming it over the old one (vim,
//! `sed -i`), and `git checkout` replaces it; a watch on the old inode would
//! go deaf. Events are debounced: a burst of writes yields one reload, of the
//! last content. A slow poll backs the events up (filesystems without
//! inotify, missed events). The file briefly missing is not a change: the
//! last content stays in force until a readable file is back. Only a change
//! of content is reported, so touching the file does nothing.

use notify::{RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the file must stay unchanged before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the file is checked even without events.
pub const POLL: Duration = Duration::from_secs(2);

/// Errors starting the watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Start watching `file`; each new content arrives on the channel.
/// `current` is the content already in force.
pub fn watch(file: &Path, current: String) -> Result<mpsc::Receiver<String>, WatchError> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<()>();
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = event_tx.send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;

    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        let mut last = current;
        let mut missing_reported = false;
        loop {
            // Wait for an event or the poll tick, then for quiet.
            tokio::select! {
                got = event_rx.recv() => if got.is_none() { return },
                _ = tokio::time::sleep(POLL) => {}
            }
            loop {
                match tokio::time::timeout(DEBOUNCE, event_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            match tokio::fs::read_to_string(&file).await {
                Ok(text) => {
                    missing_reported = false;
                    if text != last {
                        last = text.clone();
                        if tx.send(text).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if !missing_reported {
                        tracing::warn!(file = %file.display(), error = %e,
                            "config file unreadable; keeping the last good config");
                        missing_reported = true;
                    }
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut mpsc::Receiver<String>, within: Duration) -> Option<String> {
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    #[tokio::test]
    async fn reports_the_last_of_quick_edits_and_survives_rename_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slipway.toml");
        std::fs::write(&file, "v0").unwrap();
        let mut rx = watch(&file, "v0".into()).unwrap();

        // Many quick edits: one report, of the last content.
        for i in 1..=5 {
            std::fs::write(&file, format!("v{i}")).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await.as_deref(),
            Some("v5")
        );
        assert_eq!(next(&mut rx, Duration::from_millis(800)).await, None);

        // Save by rename, as vim and `sed -i` do.
        let tmp = dir.path().join(".slipway.toml.swp");
        std::fs::write(&tmp, "v6").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await.as_deref(),
            Some("v6")
        );

        // Briefly missing, then back unchanged: not a change.
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(&file, "v6").unwrap();
        assert_eq!(next(&mut rx, Duration::from_secs(3)).await, None);

        // Touching without changing content is not a change either.
        std::fs::write(&file, "v6").unwrap();
        assert_eq!(next(&mut rx, Duration::from_secs(1)).await, None);
        std::fs::write(&file, "v7").unwrap();
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await.as_deref(),
            Some("v7")
        );
    }
}
