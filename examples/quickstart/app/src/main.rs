//! The quickstart app: a tiny web server with `/` and `/healthz`.
//!
//! Its version is baked in at build time from `SLIPWAY_VERSION` (the
//! `command` plugin sets it), and the version's pre-release tag picks a
//! behaviour so every path of a deployment can be tried by editing one line:
//! - `1.2.0`: healthy;
//! - `1.2.0-broken`: `/` answers 500, so the smoke test stops it in staging;
//! - `1.2.0-sick`: passes the smoke test, then `/healthz` turns 503 three
//!   seconds after start, so the health gate rolls it back. The delay is
//!   `HELLO_SICK_AFTER_MS` (milliseconds, default 3000) when set: `0` makes
//!   it unhealthy from the first check, so one environment's gate can fail
//!   at once while another's passes.
//!
//! - `1.2.0-flaky`: `/` answers 500 to one request in three: it passes a
//!   smoke test with retries and every health check, and only its live
//!   figures give it away (a canary, `traffic.canary`).
//!
//! `GET /ws` with `Upgrade: websocket` switches protocols and then echoes
//! each line back prefixed with the version, until the client closes: a
//! long-lived connection for trying a drain.
//!
//! `HELLO_START_AFTER_MS` (milliseconds) makes it wait that long before it
//! listens, like an app that loads for a while at boot (a JVM, a migration).
//!
//! Std only, so it builds with plain `rustc` in about a second.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const VERSION: &str = match option_env!("SLIPWAY_VERSION") {
    Some(v) => v,
    None => "dev",
};

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let env = std::env::var("SLIPWAY_ENVIRONMENT").unwrap_or_else(|_| "local".into());
    if let Some(ms) = std::env::var("HELLO_START_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        println!("hello {VERSION} ({env}) starting: listening in {ms} ms");
        std::thread::sleep(Duration::from_millis(ms));
    }
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello {VERSION}: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let sick_after = std::env::var("HELLO_SICK_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_millis);
    println!("hello {VERSION} ({env}) listening on 127.0.0.1:{port}");
    let started = Instant::now();
    let served = Arc::new(AtomicU64::new(0));
    let env: Arc<str> = env.into();
    for stream in listener.incoming().flatten() {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let (env, served) = (env.clone(), served.clone());
        // A thread per connection: a WebSocket held open blocks no one.
        std::thread::spawn(move || handle(stream, started, sick_after, &env, &served));
    }
}

fn handle(
    stream: TcpStream,
    started: Instant,
    sick_after: Duration,
    env: &str,
    served: &AtomicU64,
) {
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut line = String::new();
    let mut upgrade = false;
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
        upgrade |= line.to_ascii_lowercase().starts_with("upgrade: websocket");
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    if path == "/ws" && upgrade {
        let _ = stream.set_read_timeout(None);
        let mut out = &stream;
        let _ = write!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        );
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if write!(out, "{VERSION}: {line}").is_err() {
                break;
            }
            line.clear();
        }
        return;
    }
    let flaky = VERSION.ends_with("-flaky")
        && path == "/"
        && served.fetch_add(1, Ordering::Relaxed) % 3 == 2;
    let sick = VERSION.ends_with("-sick") && started.elapsed() >= sick_after;
    let (status, body) = match path {
        "/" if VERSION.ends_with("-broken") => {
            (500, format!("hello {VERSION}: broken on purpose\n"))
        }
        "/" if flaky => (500, format!("hello {VERSION}: flaky on purpose\n")),
        "/" => (200, format!("hello from {VERSION} ({env})\n")),
        "/healthz" if sick => (503, format!("{VERSION}: unhealthy\n")),
        "/healthz" => (200, format!("{VERSION}: ok\n")),
        _ => (404, "not found\n".to_string()),
    };
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    );
}
