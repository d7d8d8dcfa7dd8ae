//! Keep-alive connections for plugins' plain-HTTP requests.
//!
//! Without it, a health check every second opens a TCP connection, sends
//! one request and closes it again: connect, accept, two FIN handshakes and
//! a TIME_WAIT socket per check (its cost at 400 guarded environments:
//! BENCHMARKS.md, "Where the load goes"). Here an idle HTTP/1.1 connection goes back to a
//! pool keyed by `host:port` (and tokio runtime, see [`Key`]) and the next
//! request to that address reuses it.
//!
//! What is pooled, and why only that:
//! - plain `http` only: TLS requests (webhooks, mostly) are rare and keep
//!   wasmtime's default path;
//! - idempotent methods only (GET, HEAD, OPTIONS): a server may close an
//!   idle connection just as a request goes out on it. Such a request is
//!   sent again once on a new connection, which is safe only when sending
//!   it twice is. Other methods get a new connection each time, as before;
//! - the request body is read whole before sending so it can be resent
//!   (these methods' bodies are empty in practice).
//!
//! A connection has no task of its own: whoever waits on it (a request,
//! then its response body) polls it, so a check's I/O runs in the check's
//! task. With a task per connection, each check woke that task and it woke
//! the check back, often on the other core. An idle connection is not
//! polled: a server's close is found when it is next used (then it is
//! replaced, as above) or when it expires.
//!
//! Pooling does not widen a grant: every request is authorized before it
//! gets here, and a connection is only reused for the same `host:port`. The
//! connection carries no credentials of its own (no TLS session, no cookies),
//! so reuse between plugins granted the same address gives nothing away.

use bytes::Bytes;
use http::uri::Scheme;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// An idle connection is dropped after this long unused. Long enough for
/// checks a few seconds apart to reuse it; servers that close sooner only
/// cost a resend (see the module doc).
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Idle connections kept per `host:port` (checks of one address are spread
/// over the interval, so one is usually enough).
const IDLE_PER_HOST: usize = 4;
/// Idle connections kept in all: each is an open file and a task.
const IDLE_MAX: usize = 512;
/// How long a kept connection may take to finish its last exchange before
/// it is given up for a new one.
const READY_WAIT: Duration = Duration::from_millis(100);
/// wasmtime's default when a request sets no timeout.
const NO_TIMEOUT: Duration = Duration::from_secs(600);

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections are kept per address and per tokio runtime: a socket
/// is registered with the runtime that opened it, and one used from
/// another runtime has each of its wake-ups cross threads (health checks
/// run on a runtime of their own, deployments' steps on the agent's).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    runtime: tokio::runtime::Id,
    /// `host:port`
    address: String,
}
type Connection = Pin<Box<hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One connection: the handle requests go through and the connection
/// future that does its I/O when polled ([`Link::drive`]).
struct Link {
    sender: Sender,
    /// None once the connection has ended (then dropped, which fails
    /// whatever still waits on `sender`).
    connection: Option<Connection>,
}

impl Link {
    /// Wait for `fut` (a request on this link, or its body) while driving
    /// the connection.
    fn poll_with<T>(
        connection: &mut Option<Connection>,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if let Poll::Ready(out) = poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(conn) = connection {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "kept-alive connection ended");
                }
                *connection = None;
            }
            // The connection may have made `fut` ready (or failed it).
            return poll(cx);
        }
        Poll::Pending
    }

    async fn drive<F: Future>(connection: &mut Option<Connection>, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| Self::poll_with(connection, cx, |cx| fut.as_mut().poll(cx))).await
    }

    fn open(&self) -> bool {
        self.connection.is_some() && !self.sender.is_closed()
    }
}

struct Idle {
    link: Link,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        self.link.open() && now.duration_since(self.since) < IDLE_FOR
    }
}

/// The agent's pool of idle plain-HTTP connections, shared by all steps.
#[derive(Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    /// When `put` last closed the expired connections of every address
    /// (an idle connection is not polled, so nothing else closes it).
    swept: Mutex<Option<Instant>>,
}

/// The response and the future wasi:http waits on for the connection's
/// I/O to end (here: nothing to wait for, the body drives the connection).
pub type Sent = (
    Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
);

impl ConnectionPool {
    /// Whether `send` handles this request; the rest take wasmtime's
    /// default path (a new connection each time).
    pub fn handles(request: &Request<WasiBody>) -> bool {
        request.uri().scheme() == Some(&Scheme::HTTP)
            && matches!(
                *request.method(),
                Method::GET | Method::HEAD | Method::OPTIONS
            )
    }

    /// Send `request` on an idle connection to its address, or a new one.
    /// The caller has authorized the destination.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<Sent, Error> {
        let timeout = |pick: fn(&RequestOptions) -> Option<Duration>| {
            options.as_ref().and_then(pick).unwrap_or(NO_TIMEOUT)
        };
        let connect_timeout = timeout(|o| o.connect_timeout);
        let first_byte_timeout = timeout(|o| o.first_byte_timeout);
        let between_bytes_timeout = timeout(|o| o.between_bytes_timeout);

        let uri = request.uri();
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let key = Key {
            runtime: tokio::runtime::Handle::current().id(),
            address: match authority.port() {
                Some(_) => authority.to_string(),
                None => format!("{authority}:80"),
            },
        };
        let (mut parts, body) = request.into_parts();
        // On the wire the target is origin-form (no scheme or authority).
        parts.uri = http::Uri::builder()
            .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let body = tokio::time::timeout(first_byte_timeout, body.collect())
            .await
            .map_err(|_| Error::ConnectionWriteTimeout)??
            .to_bytes();

        let mut reused = self.take(&key);
        loop {
            let (mut link, was_idle) = match reused.take() {
                // Given back at the end of its last body: hyper may still be
                // finishing that exchange, or find the server closed it.
                Some(mut link) => {
                    let ready = tokio::time::timeout(
                        READY_WAIT,
                        Link::drive(&mut link.connection, link.sender.ready()),
                    )
                    .await;
                    match ready {
                        Ok(Ok(())) => (link, true),
                        _ => continue,
                    }
                }
                None => (connect(&key.address, connect_timeout).await?, false),
            };
            let request = Request::from_parts(parts.clone(), Full::new(body.clone()));
            let Link { sender, connection } = &mut link;
            let response = match tokio::time::timeout(
                first_byte_timeout,
                Link::drive(connection, sender.send_request(request)),
            )
            .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(e)) if was_idle => {
                    tracing::debug!(to = %key.address, error = %e, "kept-alive connection was closed; resending on a new one");
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(Error::ConnectionReadTimeout),
            };
            let response = response.map(|incoming| {
                TimedBody {
                    incoming,
                    between_bytes: between_bytes_timeout,
                    deadline: Box::pin(tokio::time::sleep(between_bytes_timeout)),
                    link: Some(link),
                    give_back: Some((Arc::clone(self), key.clone())),
                }
                .boxed_unsync()
            });
            let io: Box<dyn Future<Output = _> + Send> = Box::new(async { Ok(()) });
            return Ok((response, io));
        }
    }

    fn take(&self, key: &Key) -> Option<Link> {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        let list = idle.get_mut(key)?;
        // Newest first: the most recently used is the least likely closed.
        let found = std::iter::from_fn(|| list.pop()).find(|c| c.usable(now));
        if list.is_empty() {
            idle.remove(key);
        }
        found.map(|c| c.link)
    }

    /// Keep `link` for the next request to `key`, within the limits.
    fn put(&self, key: Key, link: Link) {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        let list = idle.entry(key).or_default();
        list.retain(|c| c.usable(now));
        if list.len() >= IDLE_PER_HOST {
            list.remove(0);
        }
        list.push(Idle { link, since: now });
        let mut swept = self.swept.lock().expect("connection pool poisoned");
        let sweep_due = swept.is_none_or(|at| now.duration_since(at) >= IDLE_FOR / 2);
        if sweep_due {
            *swept = Some(now);
            idle.retain(|_, list| {
                list.retain(|c| c.usable(now));
                !list.is_empty()
            });
        }
        if idle.values().map(Vec::len).sum::<usize>() > IDLE_MAX {
            // Sweep the closed and stale; if still over, drop the oldest.
            idle.retain(|_, list| {
                list.retain(|c| c.usable(now));
                !list.is_empty()
            });
            while idle.values().map(Vec::len).sum::<usize>() > IDLE_MAX {
                let oldest = idle
                    .iter()
                    .filter_map(|(k, list)| list.first().map(|c| (k.clone(), c.since)))
                    .min_by_key(|(_, since)| *since)
                    .map(|(k, _)| k);
                let Some(oldest) = oldest else { break };
                if let Some(list) = idle.get_mut(&oldest) {
                    list.remove(0);
                    if list.is_empty() {
                        idle.remove(&oldest);
                    }
                }
            }
        }
    }

    /// Idle connections held now (for tests).
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().expect("connection pool poisoned");
        idle.values().map(Vec::len).sum()
    }
}

/// A new HTTP/1.1 connection to `address` (`host:port`), driven by whoever
/// waits on it (see [`Link`]).
async fn connect(address: &str, timeout: Duration) -> Result<Link, Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    // Small requests and responses: do not wait to fill a segment.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    Ok(Link {
        sender,
        connection: Some(Box::pin(connection)),
    })
}

/// A response body that fails if the server goes quiet for longer than the
/// request's between-bytes timeout (as wasmtime's default path does), and
/// gives its connection back to the pool once read to the end. (Not ready
/// at that instant, maybe: hyper finishes the exchange when the connection
/// is next polled; `send` waits for readiness when it is next wanted.) A
/// body dropped unread closes its connection, which is then not reused.
struct TimedBody {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The connection the body arrives on, driven while it is read.
    link: Option<Link>,
    give_back: Option<(Arc<ConnectionPool>, Key)>,
}

impl TimedBody {
    fn ended(&mut self) {
        if let (Some((pool, key)), Some(link)) = (self.give_back.take(), self.link.take())
            && link.open()
        {
            pool.put(key, link);
        }
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        // A body known empty (HEAD, `content-length: 0`) may never be polled.
        if self.incoming.is_end_stream() {
            self.ended();
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let incoming = &mut this.incoming;
        let frame = match &mut this.link {
            Some(link) => Link::poll_with(&mut link.connection, cx, |cx| {
                Pin::new(&mut *incoming).poll_frame(cx)
            }),
            None => Pin::new(incoming).poll_frame(cx),
        };
        match frame {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between_bytes;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                e.into()
            }))),
            Poll::Ready(None) => {
                self.ended();
                Poll::Ready(None)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP/1.1 server answering `ok` to every request; counts
    /// connections. `close_after_each`: it closes the connection after each
    /// response *without* saying so, as a server whose keep-alive timeout
    /// just ran out does.
    async fn server(close_after_each: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() || close_after_each {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn get(port: u16) -> Request<WasiBody> {
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        Request::get(format!("http://127.0.0.1:{port}/health"))
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .body(body)
            .unwrap()
    }

    async fn body_of(pool: &Arc<ConnectionPool>, port: u16) -> String {
        let (response, _io) = pool.send(get(port), None).await.unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn requests_to_one_address_share_a_connection() {
        let (port, accepted) = server(false).await;
        let pool = Arc::new(ConnectionPool::default());
        for _ in 0..5 {
            assert_eq!(body_of(&pool, port).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    /// A connection's socket belongs to the runtime that opened it: the
    /// health checks' runtime and the agent's each get their own.
    #[test]
    fn connections_are_not_shared_between_runtimes() {
        let servers = tokio::runtime::Runtime::new().unwrap();
        let (port, accepted) = servers.block_on(server(false));
        let pool = Arc::new(ConnectionPool::default());
        let one = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let two = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for runtime in [&one, &two, &one, &two] {
            assert_eq!(runtime.block_on(body_of(&pool, port)), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_not_failed() {
        let (port, accepted) = server(true).await;
        let pool = Arc::new(ConnectionPool::default());
        for _ in 0..5 {
            assert_eq!(body_of(&pool, port).await, "ok");
        }
        // Every request got its answer, each on a connection of its own.
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn only_plain_idempotent_requests_are_pooled() {
        let mut request = get(80);
        assert!(ConnectionPool::handles(&request));
        *request.method_mut() = Method::POST;
        assert!(!ConnectionPool::handles(&request));
        let mut tls = get(443);
        *tls.uri_mut() = "https://127.0.0.1:443/".parse().unwrap();
        assert!(!ConnectionPool::handles(&tls));
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_return_its_connection() {
        let (port, accepted) = server(false).await;
        let pool = Arc::new(ConnectionPool::default());
        let (response, _io) = pool.send(get(port), None).await.unwrap();
        drop(response);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(body_of(&pool, port).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
