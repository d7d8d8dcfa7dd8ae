"""{{name}}: a Slipway smoke-test plugin, written in Python.

The agent calls `smoke_test` once after a release is activated in an
environment, before it is promoted: it passes when `GET url` answers
`expect_status` and, if set, the body contains `expect_body`. Replace the
test with your own.

Built by componentize-py against the WIT world `smoke-test` in `wit/` (see
README.md): the imports below are generated from it.
"""

import json
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, monotonic_clock, outgoing_handler, poll
from wit_world.imports import slipway_plugin_types as types
from wit_world.imports import wasi_http_types as http
from wit_world.imports.streams import StreamError_Closed

NAME = "{{name}}"
VERSION = "0.1.0"
# The slipway:plugin API this plugin is built against (wit/).
API_VERSION = "{{api}}"
DESCRIPTION = "Passes when GET url answers the expected status (and body substring)."

# The agent checks every step's params against this schema when it loads the
# config, so a typo fails `slipway validate`, not a deployment.
PARAMS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://", "description": "URL to GET; its host:port must be in grants.http"},
        "expect_status": {"type": "integer", "minimum": 100, "maximum": 599, "default": 200},
        "expect_body": {"type": "string", "description": "a substring the body must contain"},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": 2000},
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
            description=DESCRIPTION,
        )


class SmokeTestStep(exports.SmokeTestStep):
    def smoke_test(self, ctx: types.StepContext) -> str:
        """The report when it passes; raise Err(message) when it fails."""
        p = json.loads(ctx.params)
        url = p["url"]
        expect_status = p.get("expect_status", 200)
        expect_body = p.get("expect_body")
        host.log(host.Level.INFO, "smoke test", [("url", url), ("app", ctx.app)])
        try:
            status, body = http_request("GET", url, p.get("timeout_ms", 2000))
        except HttpFailed as e:
            raise Err(str(e))
        if status != expect_status:
            raise Err(f"GET {url}: status {status} (expected {expect_status})")
        if expect_body is not None and expect_body not in body:
            raise Err(f"GET {url}: body does not contain {json.dumps(expect_body)}")
        return f"GET {url}: {status}"
{{helpers}}
