//! An app whose source is a URL: the real agent downloads the quickstart
//! app's source as a `.tar.gz` from a real loopback HTTP server, checks its
//! sha256, builds and ships it; a config edit with a wrong checksum fails
//! before anything is touched, and a later version reuses the download.

use crate::support;

use sha2::{Digest, Sha256};
use slipway::store::DeploymentState;
use std::time::Duration;

use support::http::{HttpServer, Reply};
use support::quickstart::*;

/// Serves one file at `/releases/NAME` (404 elsewhere).
fn file_server(name: &str, body: Vec<u8>) -> HttpServer {
    HttpServer::scripted()
        .route(&format!("/releases/{name}"), move |_, _| {
            Reply::new(200, body.clone())
        })
        .start()
}

/// The app directory as a gzipped tarball: `src/main.rs` at the top.
fn tar_gz(dir: &std::path::Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// The quickstart at `version`, its source fetched from `url`.
fn url_config(q: &Quickstart, version: &str, url: &str, sha256: &str) -> String {
    let mut config = q.config.clone();
    let app = config.app_mut("hello");
    app.version = version.into();
    app.source = serde_json::json!({ "url": url, "sha256": sha256 });
    config.render()
}

#[test]
fn a_url_source_is_downloaded_verified_built_and_a_wrong_checksum_deploys_nothing() {
    let q = Quickstart::new();
    let archive = tar_gz(&q.dir.path().join("app"));
    let sha = hex::encode(Sha256::digest(&archive));
    let server = file_server("hello-src.tar.gz", archive);
    let url = server.url("/releases/hello-src.tar.gz");
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

/// A small archive that unpacks to more than `[agent] max_release_mb` fails
/// the deployment at the build, with the limit named, and leaves neither
/// the files nor a release dir behind (audit finding: a 404 KB tar.gz
/// became 401 MB on the journal's disk).
#[test]
fn an_archive_bomb_fails_the_build_and_leaves_nothing_on_disk() {
    let mut q = Quickstart::new();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", q.dir.path().join("app")).unwrap();
    let zeros = vec![0u8; 64 << 20];
    let mut header = tar::Header::new_gnu();
    header.set_size(zeros.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "zeros", &zeros[..]).unwrap();
    let bomb = tar.into_inner().unwrap().finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let sha = hex::encode(Sha256::digest(&bomb));
    let server = file_server("bomb.tar.gz", bomb);
    q.config.max_release_mb = Some(16);
    q.save(&url_config(
        &q,
        "1.0.0",
        &server.url("/releases/bomb.tar.gz"),
        &sha,
    ));
    let agent = q.start_agent();
    let failed = wait_deployment_end(&q, &agent, "1.0.0");
    let reason = failed.reason.clone().unwrap_or_default();
    assert_eq!(failed.state, DeploymentState::Failed, "{reason}");
    assert!(
        reason.contains("entry `zeros`") && reason.contains("`[agent] max_release_mb` = 16"),
        "{reason}"
    );
    let releases = q.dir.path().join("state/releases/hello");
    let left: Vec<_> = std::fs::read_dir(&releases)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left on disk: {left:?}");
    assert!(get(q.production, "/").is_none() && get(q.staging, "/").is_none());
}
