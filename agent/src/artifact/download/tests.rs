//! Downloads against a real HTTP/1.1 server on 127.0.0.1 that drops,
//! stalls, ignores `Range` or fails on demand.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
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
