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

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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

use slipway_config::source_url::file_name;
pub use slipway_config::source_url::{check_url, redact_url};

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + use<> {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { path, source }
}

/// What the URL's file name says the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TarGz,
    Tar,
    /// Anything else: a prebuilt binary, placed as is.
    File,
}

impl Kind {
    fn of(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Kind::TarGz
        } else if lower.ends_with(".tar") {
            Kind::Tar
        } else {
            Kind::File
        }
    }
}

/// Put a fetched file into the release directory `dest` (created if
/// needed): a `.tar.gz`/`.tgz`/`.tar` is unpacked (entries at their paths,
/// modes kept, setuid bits dropped); any other file is copied to
/// `dest/<file name from the URL>` with mode 0755. Blocking.
pub fn unpack(file: &Path, url: &str, dest: &Path) -> Result<(), ArtifactError> {
    let shown = redact_url(url);
    let unpack_error = |reason: String| ArtifactError::Unpack {
        url: shown.clone(),
        reason,
    };
    let name = reqwest::Url::parse(url)
        .ok()
        .as_ref()
        .and_then(file_name)
        .ok_or_else(|| unpack_error("the URL does not end in a file name".into()))?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let opened = std::fs::File::open(file).map_err(io(file))?;
    let reader = std::io::BufReader::new(opened);
    match Kind::of(&name) {
        Kind::TarGz => untar(flate2::read::MultiGzDecoder::new(reader), dest),
        Kind::Tar => untar(reader, dest),
        Kind::File => {
            use std::os::unix::fs::PermissionsExt;
            let target = dest.join(&name);
            std::fs::copy(file, &target).map_err(io(&target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(io(&target))
        }
    }
    .map_err(|e| match e {
        ArtifactError::Unpack { reason, .. } => unpack_error(reason),
        other => other,
    })
}

/// Unpack a tar stream into `dest`, refusing every entry that could write
/// or point outside it. Errors carry no URL (the caller adds it).
fn untar(reader: impl Read, dest: &Path) -> Result<(), ArtifactError> {
    use tar::EntryType;
    let refuse = |reason: String| ArtifactError::Unpack {
        url: String::new(),
        reason,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_overwrite(true);
    // Symlinks seen so far: no later entry may be written through one, so
    // every path in the archive means the same thing on disk.
    let mut symlinks: Vec<PathBuf> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("a broken tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| refuse(format!("an entry with an invalid path: {e}")))?
            .into_owned();
        let shown = raw.display().to_string();
        let path = inside(&raw).map_err(|why| refuse(format!("entry `{shown}`: {why}")))?;
        if let Some(link) = symlinks.iter().find(|l| path.starts_with(l) && path != **l) {
            return Err(refuse(format!(
                "entry `{shown}` lies under the symlink `{}`",
                link.display()
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory => {}
            EntryType::XGlobalHeader => continue,
            EntryType::Symlink => {
                let target = link_name(&entry, &shown).map_err(refuse)?;
                symlink_stays_inside(&path, &target).map_err(|why| {
                    refuse(format!(
                        "entry `{shown}`: a symlink to `{}` {why}",
                        target.display()
                    ))
                })?;
                symlinks.push(path.clone());
            }
            EntryType::Link => {
                let target = link_name(&entry, &shown).map_err(refuse)?;
                let target = inside(&target).map_err(|why| {
                    refuse(format!(
                        "entry `{shown}`: a hard link to `{}`: {why}",
                        target.display()
                    ))
                })?;
                if symlinks.iter().any(|l| target.starts_with(l)) {
                    return Err(refuse(format!(
                        "entry `{shown}`: a hard link through the symlink `{}`",
                        target.display()
                    )));
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(format!(
                    "entry `{shown}` is a device file or a pipe ({kind:?}); a release holds files, directories and links"
                )));
            }
            other => {
                return Err(refuse(format!(
                    "entry `{shown}` has an unsupported type ({other:?})"
                )));
            }
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| refuse(format!("entry `{shown}`: {e}")))?;
        if !unpacked {
            return Err(refuse(format!(
                "entry `{shown}` would be written outside the release directory"
            )));
        }
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<PathBuf, String> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        Ok(None) => Err(format!("entry `{shown}` is a link without a target")),
        Err(e) => Err(format!("entry `{shown}`: an invalid link target: {e}")),
    }
}

/// An archive path as a plain relative path: `.` dropped; absolute paths
/// and `..` refused.
fn inside(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("a `..` component would reach outside the release directory");
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path would write outside the release directory");
            }
        }
    }
    Ok(out)
}

/// A symlink at `link` (relative to the release root) may point to
/// `target` if the target is relative and stays inside. `..` may only lead
/// the target: after a name, `..` would step back from wherever that name
/// (perhaps itself a symlink) leads, which cannot be judged from the text.
fn symlink_stays_inside(link: &Path, target: &Path) -> Result<(), &'static str> {
    let depth = link.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut named = false;
    for component in target.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return Err("is absolute: it points outside the release directory");
            }
            Component::CurDir => {}
            Component::ParentDir if named => {
                return Err("has `..` after a name: it cannot be checked to stay inside");
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
        }
    }
    if ups > depth {
        return Err("points outside the release directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// What the test server does with each request.
    #[derive(Clone)]
    struct Behaviour {
        body: Arc<Vec<u8>>,
        /// Answer `Range: bytes=N-` with 206 (else always 200, whole body).
        ranges: bool,
        /// The first `drops` answers stop halfway and close the connection.
        drops: usize,
        /// Instead of closing, the dropped answers stall for this long.
        stall: Option<Duration>,
        /// Answer every request with this status and no body.
        status: Option<u16>,
    }

    impl Behaviour {
        fn serving(body: &[u8]) -> Self {
            Self {
                body: Arc::new(body.to_vec()),
                ranges: true,
                drops: 0,
                stall: None,
                status: None,
            }
        }
    }

    /// A real HTTP/1.1 server on 127.0.0.1 that records the `Range` header
    /// of every request it gets.
    struct Server {
        port: u16,
        ranges: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl Server {
        fn start(behaviour: Behaviour) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let ranges = Arc::new(Mutex::new(Vec::new()));
            let seen = ranges.clone();
            let answered = Arc::new(AtomicUsize::new(0));
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (behaviour, seen, answered) =
                        (behaviour.clone(), seen.clone(), answered.clone());
                    std::thread::spawn(move || answer(stream, &behaviour, &seen, &answered));
                }
            });
            Self { port, ranges }
        }

        fn url(&self, name: &str) -> String {
            format!("http://127.0.0.1:{}/files/{name}", self.port)
        }

        fn requests(&self) -> Vec<Option<String>> {
            self.ranges.lock().unwrap().clone()
        }
    }

    fn answer(
        stream: TcpStream,
        behaviour: &Behaviour,
        seen: &Mutex<Vec<Option<String>>>,
        answered: &AtomicUsize,
    ) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut range = None;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                range = Some(value.trim().to_string());
            }
        }
        seen.lock().unwrap().push(range.clone());
        let n = answered.fetch_add(1, Ordering::SeqCst);
        let mut stream = stream;
        if let Some(status) = behaviour.status {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            return;
        }
        let body = &behaviour.body[..];
        let from = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok())
            .filter(|_| behaviour.ranges)
            .unwrap_or(0);
        let head = if from > 0 {
            format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {from}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            )
        } else {
            "HTTP/1.1 200 OK\r\n".to_string()
        };
        let rest = &body[from..];
        let _ = write!(
            stream,
            "{head}content-length: {}\r\nconnection: close\r\n\r\n",
            rest.len()
        );
        if n < behaviour.drops {
            let _ = stream.write_all(&rest[..rest.len() / 2]);
            let _ = stream.flush();
            if let Some(stall) = behaviour.stall {
                std::thread::sleep(stall);
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = stream.write_all(rest);
    }

    fn quick() -> FetchOptions {
        FetchOptions {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(2),
            attempts: 3,
            backoff: Duration::from_millis(20),
            max_bytes: 1 << 20,
        }
    }

    /// 200 KB that differ everywhere, so a wrongly resumed file shows.
    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[tokio::test]
    async fn a_dropped_connection_resumes_with_a_range_request() {
        let body = body();
        let server = Server::start(Behaviour {
            drops: 1,
            ..Behaviour::serving(&body)
        });
        let dir = tempfile::tempdir().unwrap();
        let got = fetch(dir.path(), &server.url("app.bin"), &sha(&body), &quick())
            .await
            .unwrap();
        assert!(!got.reused);
        assert_eq!(got.path, dir.path().join(sha(&body)));
        assert_eq!(std::fs::read(&got.path).unwrap(), body);
        assert_eq!(
            server.requests(),
            [None, Some(format!("bytes={}-", body.len() / 2))],
            "the second request asks for the rest only"
        );
        assert!(!dir.path().join(format!("{}.part", sha(&body))).exists());
    }

    #[tokio::test]
    async fn a_server_that_ignores_range_is_downloaded_again_from_the_start() {
        let body = body();
        let server = Server::start(Behaviour {
            drops: 2,
            ranges: false,
            ..Behaviour::serving(&body)
        });
        let dir = tempfile::tempdir().unwrap();
        let got = fetch(dir.path(), &server.url("app.bin"), &sha(&body), &quick())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&got.path).unwrap(),
            body,
            "not appended twice"
        );
        let asked = server.requests();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert_eq!(asked[0], None);
        assert!(asked[1].is_some() && asked[2].is_some(), "{asked:?}");
    }

    #[tokio::test]
    async fn gives_up_after_three_attempts_and_keeps_the_part_to_resume() {
        let body = body();
        let server = Server::start(Behaviour {
            drops: usize::MAX,
            ..Behaviour::serving(&body)
        });
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(dir.path(), &server.url("app.bin"), &sha(&body), &quick())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("downloading {}: ", server.url("app.bin"))),
            "{err}"
        );
        assert!(err.contains("gave up after 3 attempts"), "{err}");
        assert_eq!(server.requests().len(), 3);
        let part = dir.path().join(format!("{}.part", sha(&body)));
        let kept = std::fs::read(&part).unwrap();
        assert!(!kept.is_empty() && body.starts_with(&kept), "a true prefix");

        // A later fetch (the next deployment) resumes from the kept part.
        let healthy = Server::start(Behaviour::serving(&body));
        let got = fetch(dir.path(), &healthy.url("app.bin"), &sha(&body), &quick())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&got.path).unwrap(), body);
        assert_eq!(healthy.requests(), [Some(format!("bytes={}-", kept.len()))]);
    }

    #[tokio::test]
    async fn a_mismatch_deletes_the_download_and_names_both_hashes() {
        let body = body();
        let server = Server::start(Behaviour::serving(&body));
        let dir = tempfile::tempdir().unwrap();
        let wrong = sha(b"another file");
        let url = server.url("app.tar.gz");
        let err = fetch(dir.path(), &url, &wrong.to_uppercase(), &quick())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "downloaded {url}: sha256 mismatch: expected {wrong}, got {}",
                sha(&body)
            )
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing kept: {left:?}");
    }

    #[tokio::test]
    async fn a_verified_download_is_reused_without_a_request() {
        let body = body();
        let server = Server::start(Behaviour::serving(&body));
        let dir = tempfile::tempdir().unwrap();
        let url = server.url("app.bin");
        let first = fetch(dir.path(), &url, &sha(&body), &quick())
            .await
            .unwrap();
        let again = fetch(dir.path(), &url, &sha(&body), &quick())
            .await
            .unwrap();
        assert!(!first.reused && again.reused);
        assert_eq!(again.bytes, body.len() as u64);
        assert_eq!(server.requests().len(), 1, "the second fetch asked nothing");

        // A file damaged on disk is not trusted: it is downloaded again.
        std::fs::write(&first.path, b"damaged").unwrap();
        let repaired = fetch(dir.path(), &url, &sha(&body), &quick())
            .await
            .unwrap();
        assert!(!repaired.reused);
        assert_eq!(std::fs::read(&repaired.path).unwrap(), body);
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn a_stalled_server_times_out_instead_of_hanging() {
        let body = body();
        let server = Server::start(Behaviour {
            drops: usize::MAX,
            stall: Some(Duration::from_secs(20)),
            ..Behaviour::serving(&body)
        });
        let dir = tempfile::tempdir().unwrap();
        let options = FetchOptions {
            idle_timeout: Duration::from_millis(300),
            attempts: 2,
            ..quick()
        };
        let started = std::time::Instant::now();
        let err = fetch(dir.path(), &server.url("app.bin"), &sha(&body), &options)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no data for 300ms"), "{err}");
        assert!(err.contains("gave up after 2 attempts"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "did not hang");
    }

    #[tokio::test]
    async fn http_errors_and_oversized_files_fail_without_retrying() {
        let body = body();
        let dir = tempfile::tempdir().unwrap();
        let missing = Server::start(Behaviour {
            status: Some(404),
            ..Behaviour::serving(&body)
        });
        let err = fetch(dir.path(), &missing.url("app.bin"), &sha(&body), &quick())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the server answered HTTP 404"), "{err}");
        assert_eq!(missing.requests().len(), 1);

        let big = Server::start(Behaviour::serving(&body));
        let options = FetchOptions {
            max_bytes: 1000,
            ..quick()
        };
        let err = fetch(dir.path(), &big.url("app.bin"), &sha(&body), &options)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArtifactError::TooLarge { max: 1000, .. }),
            "{err}"
        );
        assert_eq!(big.requests().len(), 1);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing kept: {left:?}");
    }

    #[tokio::test]
    async fn a_server_error_is_retried() {
        let body = body();
        let server = Server::start(Behaviour {
            status: Some(503),
            ..Behaviour::serving(&body)
        });
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(dir.path(), &server.url("app.bin"), &sha(&body), &quick())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP 503"), "{err}");
        assert_eq!(server.requests().len(), 3);
    }

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

    /// A tar entry written with raw header fields, so hostile archives can
    /// be made (the tar builder refuses some of these paths).
    fn entry(
        out: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
    ) {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        out.append(&header, data).unwrap();
    }

    fn tarball(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut out = tar::Builder::new(Vec::new());
        f(&mut out);
        out.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// Unpack `bytes` as if downloaded from a URL ending in `name`.
    fn unpack_as(name: &str, bytes: &[u8]) -> (tempfile::TempDir, Result<(), ArtifactError>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("download");
        std::fs::write(&file, bytes).unwrap();
        let dest = dir.path().join("release");
        let result = unpack(
            &file,
            &format!("https://user:pw@example.com/x/{name}?sig=1"),
            &dest,
        );
        (dir, result)
    }

    #[test]
    fn a_tar_gz_is_unpacked_with_its_modes_and_inner_links() {
        use tar::EntryType::*;
        let archive = tarball(|t| {
            entry(t, "bin/", Directory, "", b"", 0o755);
            entry(t, "bin/app", Regular, "", b"#!/bin/sh\necho hi\n", 0o755);
            entry(t, "./share/readme.txt", Regular, "", b"hello", 0o644);
            entry(t, "bin/readme", Symlink, "../share/readme.txt", b"", 0o777);
            entry(t, "current", Symlink, "bin", b"", 0o777);
            entry(t, "bin/copy", Link, "bin/app", b"", 0o755);
        });
        for (name, bytes) in [
            ("app-1.2.0.tar.gz", gzip(&archive)),
            ("app.TGZ", gzip(&archive)),
            ("app.tar", archive.clone()),
        ] {
            let (dir, result) = unpack_as(name, &bytes);
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let release = dir.path().join("release");
            let app = release.join("bin/app");
            assert_eq!(std::fs::read(&app).unwrap(), b"#!/bin/sh\necho hi\n");
            let mode = std::fs::metadata(&app).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{name}");
            assert_eq!(std::fs::read(release.join("bin/readme")).unwrap(), b"hello");
            assert!(release.join("current/app").is_file());
            assert!(release.join("bin/copy").is_file());
        }
    }

    #[test]
    fn a_plain_file_is_placed_executable_under_its_url_name() {
        let (dir, result) = unpack_as("tool-linux-amd64", b"\x7fELF pretend");
        result.unwrap();
        let tool = dir.path().join("release/tool-linux-amd64");
        assert_eq!(std::fs::read(&tool).unwrap(), b"\x7fELF pretend");
        let mode = std::fs::metadata(&tool).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn archives_that_reach_outside_the_release_are_refused() {
        use tar::EntryType::*;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "absolute path",
                tarball(|t| entry(t, "/tmp/slipway-escape", Regular, "", b"x", 0o644)),
                "entry `/tmp/slipway-escape`: an absolute path",
            ),
            (
                "dot-dot",
                tarball(|t| entry(t, "a/../../escape", Regular, "", b"x", 0o644)),
                "entry `a/../../escape`: a `..` component",
            ),
            (
                "symlink up and out",
                tarball(|t| entry(t, "a/link", Symlink, "../../etc", b"", 0o777)),
                "a symlink to `../../etc` points outside",
            ),
            (
                "absolute symlink",
                tarball(|t| entry(t, "passwd", Symlink, "/etc/passwd", b"", 0o777)),
                "a symlink to `/etc/passwd` is absolute",
            ),
            (
                "dot-dot after a symlink",
                tarball(|t| {
                    entry(t, "here", Symlink, ".", b"", 0o777);
                    entry(t, "up", Symlink, "here/..", b"", 0o777);
                }),
                "has `..` after a name",
            ),
            (
                "write through a symlink",
                tarball(|t| {
                    entry(t, "sub/", Directory, "", b"", 0o755);
                    entry(t, "sub/up", Symlink, "..", b"", 0o777);
                    entry(t, "sub/up/evil", Regular, "", b"x", 0o644);
                }),
                "entry `sub/up/evil` lies under the symlink `sub/up`",
            ),
            (
                "hard link to a symlink",
                tarball(|t| {
                    entry(t, "a/b/", Directory, "", b"", 0o755);
                    entry(t, "a/b/l", Symlink, "../../x", b"", 0o777);
                    entry(t, "top", Link, "a/b/l", b"", 0o777);
                }),
                "a hard link through the symlink",
            ),
            (
                "character device",
                tarball(|t| entry(t, "null", Char, "", b"", 0o666)),
                "entry `null` is a device file",
            ),
            (
                "fifo",
                tarball(|t| entry(t, "pipe", Fifo, "", b"", 0o666)),
                "entry `pipe` is a device file or a pipe",
            ),
        ];
        for (what, archive, expected) in cases {
            let (dir, result) = unpack_as("app.tar.gz", &gzip(&archive));
            let err = result.expect_err(what).to_string();
            assert!(
                err.starts_with("unpacking https://example.com/x/app.tar.gz?…: "),
                "{what}: {err}"
            );
            assert!(err.contains(expected), "{what}: {err}");
            assert!(!dir.path().join("escape").exists(), "{what}");
        }
        assert!(!Path::new("/tmp/slipway-escape").exists());
    }

    #[test]
    fn a_file_that_is_not_what_its_name_says_is_a_clear_error() {
        let (_dir, result) = unpack_as("app.tar.gz", b"plain text, not gzip");
        let err = result.unwrap_err().to_string();
        assert!(
            err.starts_with("unpacking https://example.com/x/app.tar.gz?…: "),
            "{err}"
        );
    }
}
