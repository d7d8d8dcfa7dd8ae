//! App sources from a URL (`source = { url, sha256 }`): the file is
//! downloaded once into `state_dir/downloads/<sha256>` and unpacked into each
//! new release directory.
//!
//! Why it is this careful: the server is outside our control. A dropped
//! connection is resumed with `Range` instead of restarted; a server that
//! stops sending is timed out rather than waited on forever; a body over the
//! size cap is refused; nothing is used before its sha256 matches the one in
//! the config, and a verified file is content addressed, so later releases
//! reuse it without a request. An archive cannot write outside the release
//! directory: absolute paths, `..`, symlinks pointing out and device files
//! are refused. URLs are shown without userinfo and query, where tokens live.
//!
//! Not here: what happens to the release afterwards (the engine builds and
//! activates it).

mod download;
mod unpack;

pub use download::{FetchOptions, Fetched, fetch};
pub use slipway_config::source_url::{check_url, redact_url};
pub use unpack::{UnpackLimits, unpack};

use std::path::{Path, PathBuf};

/// Why a URL source could not be fetched or unpacked. Every message names
/// the URL (redacted) and says what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("downloading {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("downloaded {url}: sha256 mismatch: expected {expected}, got {got}")]
    Mismatch {
        url: String,
        expected: String,
        got: String,
    },
    #[error("downloading {url}: larger than the limit of {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("unpacking {url}: {reason}")]
    Unpack { url: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + use<> {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            redact_url("https://bob:hunter2@example.com/a/app.tgz?token=abc#x"),
            "https://example.com/a/app.tgz?…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/app.tgz"),
            "http://127.0.0.1:8080/app.tgz"
        );
        assert!(check_url("https://example.com/app-1.2.0.tar.gz").is_ok());
        let err = check_url("ftp://bob:hunter2@example.com/app.tgz").unwrap_err();
        assert!(err.contains("not an http or https URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            check_url("https://example.com/")
                .unwrap_err()
                .contains("file name")
        );
        assert!(check_url("app.tgz").unwrap_err().contains("not a URL"));
    }
}
