"""{{name}}: a Slipway health-check plugin, written in Python.

The agent calls `check` at the environment's `interval` while a new release
bakes and, after promotion, while it runs: healthy while `GET url` answers
`expect_status`. Replace the probe with your own.

Built by componentize-py against the WIT world `health-check` in `wit/`
(see README.md): the imports below are generated from it.
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
DESCRIPTION = "Healthy while GET url answers the expected status."

# The agent checks every step's params against this schema when it loads the
# config, so a typo fails `slipway validate`, not a deployment.
PARAMS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://", "description": "URL to GET; its host:port must be in grants.http"},
        "expect_status": {"type": "integer", "minimum": 100, "maximum": 599, "default": 200},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": 2000},
    },
}


class Plugin(exports.Plugin):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME,
            version=VERSION,
            api_version=API_VERSION,
            kinds=[types.StepKind.HEALTH_CHECK],
            params_schema=json.dumps(PARAMS_SCHEMA),
            description=DESCRIPTION,
        )


class HealthCheckStep(exports.HealthCheckStep):
    def check(self, ctx: types.StepContext) -> types.HealthReport:
        p = json.loads(ctx.params)
        url = p["url"]
        expect_status = p.get("expect_status", 200)
        host.log(host.Level.DEBUG, "checking", [("url", url), ("app", ctx.app)])
        try:
            status, _ = http_request("GET", url, p.get("timeout_ms", 2000))
        except HttpFailed as e:
            return report(types.HealthStatus.UNHEALTHY, str(e))
        if status != expect_status:
            return report(
                types.HealthStatus.UNHEALTHY,
                f"GET {url}: status {status} (expected {expect_status})",
            )
        return report(types.HealthStatus.HEALTHY, f"GET {url}: {status}")


def report(status: types.HealthStatus, message: str) -> types.HealthReport:
    return types.HealthReport(status=status, message=message)
{{helpers}}
