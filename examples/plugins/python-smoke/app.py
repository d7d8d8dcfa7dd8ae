"""python-smoke: a Slipway smoke test written in Python.

Sends one GET (or HEAD) through `wasi:http/outgoing-handler` and passes when
the status, and optionally a body substring, match. Retries a few times so an
app that is still starting is not reported as broken. Built with
componentize-py against `wit/`, world `smoke-test` (see README.md).

The HTTP call goes only where the config's `grants.http` allows: a denied
request comes back as `HttpRequestDenied` and fails the step with that.
"""

import json
import re
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, monotonic_clock, outgoing_handler, poll
from wit_world.imports import slipway_plugin_types as types
from wit_world.imports import wasi_http_types as http
from wit_world.imports.streams import StreamError_Closed

NAME = "python-smoke"
VERSION = "0.1.0"
API_VERSION = "0.1.0"
MAX_BODY = 256 * 1024

PARAMS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://", "description": "URL to request"},
        "method": {"type": "string", "enum": ["GET", "HEAD"], "default": "GET"},
        "expect_status": {"type": "integer", "minimum": 100, "maximum": 599, "default": 200},
        "expect_body": {"type": "string", "description": "substring the body must contain"},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": 2000},
        "retries": {"type": "integer", "minimum": 0, "maximum": 100, "default": 0},
        "retry_delay_ms": {"type": "integer", "minimum": 0, "maximum": 600000, "default": 500},
    },
}


class Plugin(exports.Plugin):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME,
            version=VERSION,
            api_version=API_VERSION,
            kinds=[types.StepKind.SMOKE_TEST],
            params_schema=json.dumps(PARAMS_SCHEMA),
            description="Smoke test in Python: an HTTP request whose status "
            "(and optionally body) must match.",
        )


class SmokeTestStep(exports.SmokeTestStep):
    def smoke_test(self, ctx: types.StepContext) -> str:
        p = json.loads(ctx.params)
        url = p["url"]
        method = p.get("method", "GET")
        expect_status = p.get("expect_status", 200)
        expect_body = p.get("expect_body")
        timeout_ms = p.get("timeout_ms", 2000)
        retries = p.get("retries", 0)
        delay_ms = p.get("retry_delay_ms", 500)
        host.log(host.Level.INFO, f"smoke test {method} {url}", [("app", ctx.app)])

        attempt = 0
        while True:
            attempt += 1
            try:
                report = probe(method, url, expect_status, expect_body, timeout_ms)
                host.log(host.Level.INFO, report, [("attempt", str(attempt))])
                return report
            except ProbeFailed as e:
                if attempt > retries:
                    suffix = f" (after {attempt} attempts)" if retries else ""
                    host.log(host.Level.WARN, f"{e}{suffix}", [("attempt", str(attempt))])
                    raise Err(f"{e}{suffix}")
                host.log(host.Level.DEBUG, "attempt failed", [("error", str(e))])
                sleep_ms(delay_ms)


class ProbeFailed(Exception):
    pass


def probe(method, url, expect_status, expect_body, timeout_ms) -> str:
    """One request: a short report, or ProbeFailed saying why it failed."""
    started = monotonic_clock.now()
    status, body = request(method, url, timeout_ms)
    took = (monotonic_clock.now() - started) // 1_000_000
    if status != expect_status:
        raise ProbeFailed(
            f"{method} {url}: status {status} (expected {expect_status}) after {took} ms"
        )
    if expect_body is not None and expect_body not in body:
        raise ProbeFailed(
            f"{method} {url}: body does not contain {json.dumps(expect_body)} (status {status}, {took} ms)"
        )
    return f"{method} {url}: {status} in {took} ms (python)"


def request(method: str, url: str, timeout_ms: int) -> tuple[int, str]:
    """Send a request with an overall deadline; (status, body as text)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProbeFailed(f"{url}: not an http(s) URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    deadline = monotonic_clock.now() + timeout_ms * 1_000_000
    req = http.OutgoingRequest(http.Fields())
    req.set_method(http.Method_Head() if method == "HEAD" else http.Method_Get())
    req.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    req.set_authority(parts.netloc)
    req.set_path_with_query(path)
    options = http.RequestOptions()
    options.set_connect_timeout(timeout_ms * 1_000_000)
    options.set_first_byte_timeout(timeout_ms * 1_000_000)
    options.set_between_bytes_timeout(timeout_ms * 1_000_000)
    try:
        future = outgoing_handler.handle(req, options)
    except Err as e:
        raise ProbeFailed(f"{method} {url}: {describe_error(e.value)}")

    with future:
        wait(future.subscribe(), deadline, f"{method} {url}: no response in {timeout_ms} ms")
        result = future.get()
    if result is None or isinstance(result, Err):
        raise ProbeFailed(f"{method} {url}: no response")
    if isinstance(result.value, Err):
        raise ProbeFailed(f"{method} {url}: {describe_error(result.value.value)}")
    with result.value.value as response:
        status = response.status()
        body = b"" if method == "HEAD" else read_body(response, deadline, f"{method} {url}")
    return status, body.decode("utf-8", errors="replace")


def read_body(response: http.IncomingResponse, deadline: int, what: str) -> bytes:
    """Read up to MAX_BODY bytes of the body before the deadline."""
    chunks = []
    size = 0
    with response.consume() as body:
        with body.stream() as stream:
            while size < MAX_BODY:
                try:
                    chunk = stream.read(MAX_BODY - size)
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        break
                    raise ProbeFailed(f"{what}: reading the body failed")
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                else:
                    wait(stream.subscribe(), deadline, f"{what}: body timed out")
    return b"".join(chunks)


def wait(pollable, deadline: int, timeout_message: str) -> None:
    """Block until `pollable` is ready, or fail at `deadline`."""
    with pollable:
        remaining = max(0, deadline - monotonic_clock.now())
        with monotonic_clock.subscribe_duration(remaining) as timer:
            ready = poll.poll([pollable, timer])
    if 0 not in ready:
        raise ProbeFailed(timeout_message)


def sleep_ms(ms: int) -> None:
    with monotonic_clock.subscribe_duration(ms * 1_000_000) as timer:
        timer.block()


def describe_error(code) -> str:
    """An ErrorCode in words; `HttpRequestDenied` is the agent's grant check."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name == "HttpRequestDenied":
        return "request denied by the agent (host not in this plugin's http grant)"
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
    detail = getattr(code, "value", None)
    return f"{words}: {detail}" if detail is not None else words
