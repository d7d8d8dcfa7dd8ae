//! The one HTTP server of the tests: a real HTTP/1.1 server on 127.0.0.1,
//! scripted per route, that records every request it gets. Webhook
//! receivers, artifact hosts, slow or squatting servers and the plugins'
//! check targets are all this server with other routes.
//!
//! Each connection gets its own thread and one answer (`connection:
//! close`), so a slow route never holds up another request. Dropping the
//! server stops it and frees its port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// What a route answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Waited before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A route's script: the request, and how many requests this route had
/// before it (0 for the first).
type Script = Arc<dyn Fn(&Request, usize) -> Reply + Send + Sync>;

/// Routes by exact path, and what every other path answers.
#[derive(Clone)]
pub struct Routes {
    routes: Vec<(String, Script, Arc<AtomicUsize>)>,
    fallback: Script,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            fallback: Arc::new(|_, _| Reply::new(404, "not found")),
        }
    }
}

impl Routes {
    /// `path` answers with `script(request, nth)`.
    pub fn route(
        mut self,
        path: &str,
        script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.routes
            .push((path.to_string(), Arc::new(script), Arc::default()));
        self
    }

    /// `path` always answers `status` with `body`.
    pub fn fixed(self, path: &str, status: u16, body: &str) -> Self {
        let body = body.to_string();
        self.route(path, move |_, _| Reply::new(status, body.clone()))
    }

    /// `path` answers 503 "warming up" to its first two requests, then
    /// `status` with `body`: a server that is not ready yet.
    pub fn flaky(self, path: &str, status: u16, body: &str) -> Self {
        let body = body.to_string();
        self.route(path, move |_, n| {
            if n < 2 {
                Reply::new(503, "warming up")
            } else {
                Reply::new(status, body.clone())
            }
        })
    }

    /// Paths without a route answer with `script` (404 by default).
    pub fn otherwise(
        mut self,
        script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.fallback = Arc::new(script);
        self
    }

    fn reply(&self, request: &Request) -> Reply {
        match self.routes.iter().find(|(path, ..)| *path == request.path) {
            Some((_, script, count)) => script(request, count.fetch_add(1, Ordering::SeqCst)),
            None => (self.fallback)(request, 0),
        }
    }

    /// Serve these routes on a free port.
    pub fn start(self) -> HttpServer {
        HttpServer::serve(TcpListener::bind("127.0.0.1:0").unwrap(), self)
    }

    /// Serve these routes on `port` (someone else's server on an app's port).
    pub fn start_on(self, port: u16) -> HttpServer {
        HttpServer::serve(TcpListener::bind(("127.0.0.1", port)).unwrap(), self)
    }
}

/// A running scripted server.
pub struct HttpServer {
    pub port: u16,
    /// Connections accepted.
    pub hits: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// The plugins' usual target: `/ok` 200 "hello world", `/fail` 500,
    /// `/flaky` 503 for the first two requests then 200, `/big` a 2 MB body.
    pub fn start() -> Self {
        Self::routes().start()
    }

    /// The usual routes, to add to.
    pub fn routes() -> Routes {
        Routes::default()
            .fixed("/ok", 200, "hello world")
            .fixed("/fail", 500, "broken")
            .flaky("/flaky", 200, "warm")
            .route("/big", |_, _| Reply::new(200, "z".repeat(2 << 20)))
    }

    /// No routes yet: every path answers 404.
    pub fn scripted() -> Routes {
        Routes::default()
    }

    fn serve(listener: TcpListener, routes: Routes) -> Self {
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, log, stopped) = (hits.clone(), received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let (routes, log) = (routes.clone(), log.clone());
                std::thread::spawn(move || answer(stream, &routes, &log));
            }
        });
        Self {
            port,
            hits,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The requests to `path` so far, in arrival order.
    pub fn received(&self, path: &str) -> Vec<Request> {
        let all = self.received.lock().unwrap();
        all.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The JSON bodies posted to `path`, in arrival order.
    pub fn json_bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.received(path)
            .iter()
            .map(|r| serde_json::from_str(&r.body).expect("a JSON body"))
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(stream: TcpStream, routes: &Routes, log: &Mutex<Vec<Request>>) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    log.lock().unwrap().push(request.clone());
    let reply = routes.reply(&request);
    std::thread::sleep(reply.delay);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.status,
        reply.body.len()
    );
    let _ = stream.write_all(&reply.body);
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
