//! Downloading a URL source into `state_dir/downloads/<sha256>`: resumed
//! with `Range` after a dropped connection, timed out when the server
//! stalls, capped in size, and kept only once its sha256 matches.

use super::{ArtifactError, io, redact_url};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How patient a download is. The defaults suit a release artifact over
/// the internet; tests shorten them.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response head or for the next bytes of the body:
    /// a stuck server fails the attempt instead of hanging the deployment.
    pub idle_timeout: Duration,
    /// Attempts in all; a dropped connection resumes where it stopped.
    pub attempts: u32,
    /// Wait before the second attempt, doubled before each later one.
    pub backoff: Duration,
    /// Largest file accepted.
    pub max_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            attempts: 3,
            backoff: Duration::from_secs(1),
            max_bytes: 2 << 30,
        }
    }
}

/// A verified file in the download directory.
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub bytes: u64,
    /// Already there from an earlier release: no request was made.
    pub reused: bool,
}

/// Download `url` into `dir/<sha256>` unless a verified copy is there.
///
/// The body goes to `dir/<sha256>.part`, hashed as it streams; after a
/// dropped connection (or an earlier interrupted run) the next attempt asks
/// for the rest with `Range: bytes=N-` and keeps the part if the server
/// answers 206, or starts over if it answers 200. A finished file whose
/// sha256 differs is deleted.
pub async fn fetch(
    dir: &Path,
    url: &str,
    sha256: &str,
    options: &FetchOptions,
) -> Result<Fetched, ArtifactError> {
    let shown = redact_url(url);
    let sha256 = sha256.to_ascii_lowercase();
    // Two apps may share an artifact; one download at a time per file.
    let lock = download_lock(&sha256);
    let _held = lock.lock().await;

    let done = dir.join(&sha256);
    if tokio::fs::metadata(&done).await.is_ok() {
        let (got, bytes) = hash_file(&done).await?;
        if got == sha256 {
            tracing::debug!(url = %shown, file = %done.display(), "source already downloaded");
            return Ok(Fetched {
                path: done,
                bytes,
                reused: true,
            });
        }
        tracing::warn!(file = %done.display(), "a downloaded source no longer matches its sha256; downloading it again");
        remove(&done).await?;
    }
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let mut part = Partial::open(&dir.join(format!("{sha256}.part"))).await?;

    if part.len == 0 || part.hex() != sha256 {
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ArtifactError::Download {
                url: shown.clone(),
                reason: describe(e),
            })?;
        tracing::info!(url = %shown, resume_at = part.len, "downloading the source");
        let mut attempt = 1;
        loop {
            match download(&client, url, &mut part, options).await {
                Ok(()) => break,
                Err(Attempt::Fatal(reason)) => {
                    drop(part.file);
                    remove(&part.path).await?;
                    return Err(reason.into_error(shown, options.max_bytes));
                }
                Err(Attempt::Retry(reason)) if attempt < options.attempts => {
                    let wait = options.backoff * 2u32.saturating_pow(attempt - 1);
                    tracing::warn!(url = %shown, attempt, have = part.len, reason = %reason,
                        "download interrupted; trying again in {wait:?}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                // The part stays: the next deployment of this source resumes it.
                Err(Attempt::Retry(reason)) => {
                    // Written out before the lock is released, so the next
                    // fetch hashes every byte counted here.
                    part.file.flush().await.map_err(io(&part.path))?;
                    return Err(ArtifactError::Download {
                        url: shown,
                        reason: format!("{reason} (gave up after {attempt} attempts)"),
                    });
                }
            }
        }
    }
    part.file.flush().await.map_err(io(&part.path))?;
    part.file.sync_all().await.map_err(io(&part.path))?;
    let got = part.hex();
    let (path, bytes) = (part.path.clone(), part.len);
    drop(part.file);
    if got != sha256 {
        remove(&path).await?;
        return Err(ArtifactError::Mismatch {
            url: shown,
            expected: sha256,
            got,
        });
    }
    tokio::fs::rename(&path, &done).await.map_err(io(&path))?;
    tracing::info!(url = %shown, bytes, file = %done.display(), "source downloaded and verified");
    Ok(Fetched {
        path: done,
        bytes,
        reused: false,
    })
}

/// How one attempt ended, when it did not finish.
enum Attempt {
    /// The connection dropped, stalled, or the server is briefly unwell.
    Retry(String),
    /// Trying again cannot help.
    Fatal(Fatal),
}

enum Fatal {
    Status(reqwest::StatusCode),
    TooLarge,
    Io(ArtifactError),
}

impl Fatal {
    fn into_error(self, url: String, max: u64) -> ArtifactError {
        match self {
            Fatal::Status(s) => ArtifactError::Download {
                url,
                reason: format!("the server answered HTTP {s}"),
            },
            Fatal::TooLarge => ArtifactError::TooLarge { url, max },
            Fatal::Io(e) => e,
        }
    }
}

/// The `.part` file: what has arrived so far, and its running hash.
struct Partial {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    len: u64,
}

impl Partial {
    /// Open (or create) the part, hashing what an earlier run left in it.
    async fn open(path: &Path) -> Result<Self, ArtifactError> {
        let (hasher, len) = match tokio::fs::metadata(path).await {
            Ok(_) => hash_prefix(path).await?,
            Err(_) => (Sha256::new(), 0),
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            hasher,
            len,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Attempt> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| Attempt::Fatal(Fatal::Io(io(&self.path)(e))))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Forget what arrived: the server sends the whole file again.
    async fn restart(&mut self) -> Result<(), Attempt> {
        let fail = |e| Attempt::Fatal(Fatal::Io(io(&self.path)(e)));
        self.file.flush().await.map_err(fail)?;
        self.file.set_len(0).await.map_err(fail)?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

/// One request: from the start, or from `part.len` when the part has bytes.
async fn download(
    client: &reqwest::Client,
    url: &str,
    part: &mut Partial,
    options: &FetchOptions,
) -> Result<(), Attempt> {
    use reqwest::StatusCode;
    let idle = options.idle_timeout;
    let mut request = client.get(url);
    if part.len > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={}-", part.len));
    }
    let mut response = match tokio::time::timeout(idle, request.send()).await {
        Err(_) => return Err(Attempt::Retry(format!("no response in {idle:?}"))),
        Ok(Err(e)) => return Err(Attempt::Retry(describe(e))),
        Ok(Ok(r)) => r,
    };
    match response.status() {
        StatusCode::PARTIAL_CONTENT if part.len > 0 => {
            let from = content_range_start(&response);
            if from != Some(part.len) {
                part.restart().await?;
                return Err(Attempt::Retry(format!(
                    "asked for the bytes from {}, the server sent a range from {from:?}",
                    part.len
                )));
            }
        }
        StatusCode::OK => {
            if part.len > 0 {
                tracing::debug!(url = %redact_url(url), "the server does not resume; starting over");
                part.restart().await?;
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if part.len > 0 => {
            part.restart().await?;
            return Err(Attempt::Retry(
                "the server cannot resume from the partial download (416); starting over".into(),
            ));
        }
        s if s.is_server_error()
            || s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS =>
        {
            return Err(Attempt::Retry(format!("the server answered HTTP {s}")));
        }
        s => return Err(Attempt::Fatal(Fatal::Status(s))),
    }
    // For a 206 the length is what remains.
    let total = response.content_length().map(|n| n + part.len);
    if total.is_some_and(|t| t > options.max_bytes) {
        return Err(Attempt::Fatal(Fatal::TooLarge));
    }
    loop {
        match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => {
                return Err(Attempt::Retry(format!(
                    "no data for {idle:?} after {} bytes",
                    part.len
                )));
            }
            Ok(Err(e)) => {
                return Err(Attempt::Retry(format!(
                    "connection lost after {} bytes: {}",
                    part.len,
                    describe(e)
                )));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => {
                if part.len + bytes.len() as u64 > options.max_bytes {
                    return Err(Attempt::Fatal(Fatal::TooLarge));
                }
                part.write(&bytes).await?;
            }
        }
    }
    match total {
        Some(t) if part.len < t => Err(Attempt::Retry(format!(
            "the connection closed after {} of {t} bytes",
            part.len
        ))),
        _ => Ok(()),
    }
}

/// The first byte of a 206 answer, from `Content-Range: bytes N-M/T`.
fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// A reqwest error with its causes, without the URL reqwest would print.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn download_lock(sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks
        .get_or_insert_with(HashMap::new)
        .entry(sha256.to_string())
        .or_default()
        .clone()
}

async fn hash_file(path: &Path) -> Result<(String, u64), ArtifactError> {
    let (hasher, len) = hash_prefix(path).await?;
    Ok((hex::encode(hasher.finalize()), len))
}

/// The running hash and length of a file (read off the async threads).
async fn hash_prefix(path: &Path) -> Result<(Sha256, u64), ArtifactError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let len = std::io::copy(&mut file, &mut hasher)?;
        Ok((hasher, len))
    })
    .await
    .map_err(|e| io(path)(std::io::Error::other(e)))?
    .map_err(io(path))
}

async fn remove(path: &Path) -> Result<(), ArtifactError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
