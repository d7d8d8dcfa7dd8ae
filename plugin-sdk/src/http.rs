//! Outgoing HTTP through `wasi:http`. The agent sends a request only to hosts
//! in the plugin's `http` grant; any other host gets an error, not a socket.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use std::time::Duration;

/// Responses larger than this are cut, and [`Response::truncated`] is set.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// A response, with its body read into memory.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than the request's `max_body` and was cut.
    pub truncated: bool,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request, built up then [`Request::send`].
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
    max_body: usize,
}

/// `GET url` with default limits.
pub fn get(url: &str) -> Result<Response, String> {
    Request::new("GET", url).send()
}

impl Request {
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Connect, first-byte and between-bytes timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    pub fn send(&self) -> Result<Response, String> {
        let url = Url::parse(&self.url)?;
        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|e| format!("header {name}: {e:?}"))?;
        }
        let request = OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        };
        let scheme = if url.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_method(&method)
            .and_then(|()| request.set_scheme(Some(&scheme)))
            .and_then(|()| request.set_authority(Some(&url.authority)))
            .and_then(|()| request.set_path_with_query(Some(&url.path)))
            .map_err(|()| format!("invalid request for {}", self.url))?;

        let body = request.body().map_err(|()| "request body taken")?;
        if !self.body.is_empty() {
            let stream = body.write().map_err(|()| "request body stream taken")?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing request body: {e:?}"))?;
            }
        }

        let options = RequestOptions::new();
        if let Some(timeout) = self.timeout {
            let nanos = timeout.as_nanos().min(u64::MAX as u128) as u64;
            // Each setter fails only if the host does not support it.
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
        }
        let pending = outgoing_handler::handle(request, Some(options))
            .map_err(|e| describe_error(&self.url, &e))?;
        OutgoingBody::finish(body, None).map_err(|e| describe_error(&self.url, &e))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or("response not ready")?
            .map_err(|()| "response already taken")?
            .map_err(|e| describe_error(&self.url, &e))?;

        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let status = response.status();
        let incoming = response.consume().map_err(|()| "response body taken")?;
        let stream = incoming.stream().map_err(|()| "response stream taken")?;
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    let room = self.max_body - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!(
                        "reading body of {}: {}",
                        self.url,
                        e.to_debug_string()
                    ));
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body,
            truncated,
        })
    }
}

fn describe_error(url: &str, error: &ErrorCode) -> String {
    let reason = match error {
        ErrorCode::HttpRequestDenied => "denied: host not in this plugin's http grant".to_string(),
        ErrorCode::ConnectionRefused => "connection refused".to_string(),
        ErrorCode::ConnectionTimeout => "connect timed out".to_string(),
        ErrorCode::ConnectionReadTimeout => "read timed out".to_string(),
        ErrorCode::DnsTimeout | ErrorCode::DnsError(_) => "DNS lookup failed".to_string(),
        other => format!("{other:?}"),
    };
    format!("{url}: {reason}")
}

/// The parts of an `http(s)://authority/path?query` URL a request needs.
#[derive(Debug, PartialEq)]
struct Url {
    https: bool,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!(
                "{url}: only http:// and https:// URLs are supported"
            ));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Self {
            https,
            authority: authority.to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Url;

    #[test]
    fn parses_urls_requests_need() {
        let u = Url::parse("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!(
            u,
            Url {
                https: false,
                authority: "127.0.0.1:8080".into(),
                path: "/healthz?x=1".into()
            }
        );
        assert_eq!(Url::parse("https://example.com").unwrap().path, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().path, "/?q");
        assert!(Url::parse("ftp://h/").is_err());
        assert!(Url::parse("http:///x").is_err());
    }
}
