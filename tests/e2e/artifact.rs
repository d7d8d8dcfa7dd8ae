//! An app whose source is a URL: the real agent downloads the quickstart
//! app's source as a `.tar.gz` from a real loopback HTTP server, checks its
//! sha256, builds and ships it; a config edit with a wrong checksum fails
//! before anything is touched, and a later version reuses the download.

#[path = "../support/mod.rs"]
mod support;

use sha2::{Digest, Sha256};
use slipway::store::DeploymentState;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::quickstart::*;

/// Serves one file at `/releases/NAME` (404 elsewhere) and counts requests.
struct FileServer {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl FileServer {
    fn start(name: &str, body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let (counter, route) = (hits.clone(), format!("/releases/{name}"));
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let found = request.split_whitespace().nth(1) == Some(route.as_str());
                let (status, body) = if found {
                    ("200 OK", &body[..])
                } else {
                    ("404 Not Found", &b""[..])
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        });
        Self { port, hits }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/releases/{name}", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The app directory as a gzipped tarball: `src/main.rs` at the top.
fn tar_gz(dir: &std::path::Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

fn url_config(q: &Quickstart, version: &str, url: &str, sha256: &str) -> String {
    let path_source = r#"source = { path = "app" }"#;
    let text = q.config_text(version);
    assert!(text.contains(path_source));
    text.replace(
        path_source,
        &format!(r#"source = {{ url = "{url}", sha256 = "{sha256}" }}"#),
    )
}

#[test]
fn a_url_source_is_downloaded_verified_built_and_a_wrong_checksum_deploys_nothing() {
    let q = Quickstart::new();
    let archive = tar_gz(&q.dir.path().join("app"));
    let sha = hex::encode(Sha256::digest(&archive));
    let server = FileServer::start("hello-src.tar.gz", archive);
    let url = server.url("hello-src.tar.gz");
    q.save(&url_config(&q, "1.0.0", &url, &sha));
    // The local copy is gone: the only way to the source is the URL.
    std::fs::remove_dir_all(q.dir.path().join("app")).unwrap();
    let agent = q.start_agent();

    // Downloaded, unpacked, built, through staging into production.
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_succeeded(&first, &agent);
    assert!(serves(q.staging, "1.0.0") && serves(q.production, "1.0.0"));
    assert_eq!(server.hits(), 1);
    let downloads = q.dir.path().join("state/downloads");
    assert!(downloads.join(&sha).is_file(), "kept under its sha256");
    let good = first.release_id.clone().unwrap();

    // Only the checksum changes, and it is wrong: the deployment fails with
    // the reason, and nothing is built or activated.
    let wrong = hex::encode(Sha256::digest(b"not the archive"));
    q.save(&url_config(&q, "1.0.0", &url, &wrong));
    let mut failed = None;
    wait_for(
        "the wrong-checksum deployment to end",
        &agent,
        Duration::from_secs(60),
        || {
            failed = latest(&q).filter(|d| d.id != first.id && d.state != DeploymentState::Running);
            failed.is_some()
        },
    );
    let failed = failed.unwrap();
    assert_eq!(failed.state, DeploymentState::Failed);
    let reason = failed.reason.clone().unwrap();
    assert!(
        reason.contains(&format!(
            "downloaded {url}: sha256 mismatch: expected {wrong}, got {sha}"
        )),
        "{reason}"
    );
    assert_eq!(failed.release_id, None, "no release was made");
    assert!(
        q.journal().steps(failed.id).unwrap().is_empty(),
        "no step ran"
    );
    assert_eq!(server.hits(), 2, "it was downloaded to be checked");
    assert!(!downloads.join(&wrong).exists());
    assert!(!downloads.join(format!("{wrong}.part")).exists());
    for env in ["staging", "production"] {
        let state = q.journal().env_state("hello", env).unwrap().unwrap();
        assert_eq!(
            state.current_release.as_deref(),
            Some(good.as_str()),
            "{env}"
        );
    }
    assert!(serves(q.staging, "1.0.0") && serves(q.production, "1.0.0"));

    // A new version of the same archive: built from the verified download,
    // with no request.
    q.save(&url_config(&q, "1.1.0", &url, &sha));
    let next = wait_deployment_end(&q, &agent, "1.1.0");
    assert_succeeded(&next, &agent);
    assert!(serves(q.staging, "1.1.0") && serves(q.production, "1.1.0"));
    assert_eq!(server.hits(), 2, "the download was reused");
}
