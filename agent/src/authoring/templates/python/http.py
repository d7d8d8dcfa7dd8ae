

# --- outgoing HTTP through wasi:http -------------------------------------
# The agent sends a request only to a host in the plugin's `grants.http`;
# any other host gets the error code HttpRequestDenied, not a socket.

MAX_BODY = 256 * 1024


class HttpFailed(Exception):
    """A request that got no answer; the message says why."""


def http_request(method: str, url: str, timeout_ms: int, body: bytes = b"",
                 content_type: str | None = None) -> tuple[int, str]:
    """Send one GET or POST within `timeout_ms`: (status, body as text)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HttpFailed(f"{url}: not an http(s) URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    what = f"{method} {url}"
    timeout = timeout_ms * 1_000_000
    deadline = monotonic_clock.now() + timeout

    headers = [("content-type", content_type.encode())] if content_type else []
    if body:
        # A length, not a chunked body: some servers read only the former.
        headers.append(("content-length", str(len(body)).encode()))
    request = http.OutgoingRequest(http.Fields.from_list(headers))
    request.set_method(http.Method_Post() if method == "POST" else http.Method_Get())
    request.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(path)
    options = http.RequestOptions()
    options.set_connect_timeout(timeout)
    options.set_first_byte_timeout(timeout)
    options.set_between_bytes_timeout(timeout)
    outgoing = request.body()
    if body:
        with outgoing.write() as stream:
            for at in range(0, len(body), 4096):
                stream.blocking_write_and_flush(body[at:at + 4096])
    try:
        future = outgoing_handler.handle(request, options)
        http.OutgoingBody.finish(outgoing, None)
    except Err as e:
        raise HttpFailed(f"{what}: {describe_error(e.value)}")

    with future:
        wait(future.subscribe(), deadline, f"{what}: no answer in {timeout_ms} ms")
        result = future.get()
    if result is None or isinstance(result, Err):
        raise HttpFailed(f"{what}: no answer")
    if isinstance(result.value, Err):
        raise HttpFailed(f"{what}: {describe_error(result.value.value)}")
    with result.value.value as response:
        status = response.status()
        text = read_body(response, deadline, what)
    return status, text


def read_body(response: http.IncomingResponse, deadline: int, what: str) -> str:
    """Up to MAX_BODY bytes of the body, before the deadline."""
    chunks = []
    size = 0
    with response.consume() as incoming:
        with incoming.stream() as stream:
            while size < MAX_BODY:
                try:
                    chunk = stream.read(MAX_BODY - size)
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        break
                    raise HttpFailed(f"{what}: reading the body failed")
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                else:
                    wait(stream.subscribe(), deadline, f"{what}: the body timed out")
    return b"".join(chunks).decode("utf-8", errors="replace")


def wait(pollable, deadline: int, timeout_message: str) -> None:
    """Block until `pollable` is ready; HttpFailed at `deadline`."""
    with pollable:
        remaining = max(0, deadline - monotonic_clock.now())
        with monotonic_clock.subscribe_duration(remaining) as timer:
            ready = poll.poll([pollable, timer])
    if 0 not in ready:
        raise HttpFailed(timeout_message)


def describe_error(code) -> str:
    """A wasi:http error code in words."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name == "HttpRequestDenied":
        return "denied: host not in this plugin's http grant"
    if name == "ConnectionRefused":
        return "connection refused"
    detail = getattr(code, "value", None)
    return f"{name}: {detail}" if detail is not None else name
