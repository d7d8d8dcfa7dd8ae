//! The HTTP/1.1 reverse proxy: hyper on both sides, no parsing of ours.
//!
//! Each request picks a release by the route's weights when it arrives,
//! so a client's keep-alive connection follows a switch from one request
//! to the next. Hop-by-hop headers are dropped both ways; the release sees
//! `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host`.
//! An `Upgrade` (WebSocket) is passed through: once the release answers
//! 101, bytes are copied both ways and the connection is pinned to that
//! release until it ends.
//!
//! A client costs only its own connection: headers must arrive within
//! `HEADER_TIMEOUT`, the release must answer within `RESPONSE_TIMEOUT`
//! (504 otherwise), a release that cannot be reached is a 502 naming it.

use super::proxy::RouteState;
use super::stats::InFlight;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A client has this long to send a request's headers (also bounds an
/// idle keep-alive connection waiting for its next request).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A release has this long to start answering a request.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) type ProxyBody = BoxBody<Bytes, hyper::Error>;
pub(super) type Upstream = Client<HttpConnector, Incoming>;

/// The client the proxy reaches releases with: pooled keep-alive
/// connections, no Nagle delay, a bounded connect.
pub(super) fn upstream() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Serve one client connection until it closes; once `draining` turns
/// true, finish the request in progress and close.
pub(super) async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    route: Arc<RouteState>,
    client: Upstream,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let _open = route.tunnels.open();
    let service = hyper::service::service_fn(move |req| {
        let (route, client) = (route.clone(), client.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(req, peer, &route, &client).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = async { let _ = draining.wait_for(|d| *d).await; } => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    route: &RouteState,
    client: &Upstream,
) -> Response<ProxyBody> {
    let Some(backend) = route.pick() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no release of {} is taking traffic\n", route.name),
        );
    };
    let mut in_flight = backend.begin();
    let upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    forwarded(&mut parts.headers, peer, host);
    let mut target = std::mem::take(&mut parts.uri).into_parts();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(backend.authority.clone());
    if target.path_and_query.is_none() {
        target.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = match Uri::from_parts(target) {
        Ok(uri) => uri,
        Err(e) => {
            in_flight.status(400);
            return plain(
                StatusCode::BAD_REQUEST,
                format!("bad request target: {e}\n"),
            );
        }
    };
    let sent = tokio::time::timeout(
        RESPONSE_TIMEOUT,
        client.request(Request::from_parts(parts, body)),
    )
    .await;
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, release = %backend.release, addr = %backend.addr, error = %e,
                "the release did not answer");
            in_flight.status(502);
            return plain(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{}: release {} at {} did not answer\n",
                    route.name, backend.release, backend.addr
                ),
            );
        }
        Err(_) => {
            in_flight.status(504);
            return plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{}: release {} did not answer within {} s\n",
                    route.name,
                    backend.release,
                    RESPONSE_TIMEOUT.as_secs()
                ),
            );
        }
    };
    in_flight.status(resp.status().as_u16());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = upgrade {
            let release_side = hyper::upgrade::on(&mut resp);
            let pinned = backend.pin();
            let tunnels = route.tunnels.clone();
            tokio::spawn(async move {
                let _pinned = pinned;
                let _tunnel = tunnels.open();
                match tokio::try_join!(client_side, release_side) {
                    Ok((a, b)) => {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, body.boxed());
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Tracked {
            inner: body,
            _in_flight: in_flight,
        }
        .boxed(),
    )
}

/// A response the proxy answers itself.
fn plain(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `Connection: upgrade` with an `Upgrade` header.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Drop the headers that belong to one hop (RFC 9110 7.6.1), and those the
/// `Connection` header names; an upgrade keeps `Upgrade` and says
/// `Connection: upgrade` again.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if upgrading && let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// What the release is told about the client.
fn forwarded(headers: &mut HeaderMap, peer: SocketAddr, host: Option<HeaderValue>) {
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) if !before.trim().is_empty() => format!("{before}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    // The client does not get to say how it connected.
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = host
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", host);
    }
}

/// The release's response body, with the request counted in flight until
/// the last byte is sent (or the client goes away).
struct Tracked {
    inner: Incoming,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_is_ours() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        forwarded(
            &mut h,
            "127.0.0.9:5000".parse().unwrap(),
            Some(HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }
}
