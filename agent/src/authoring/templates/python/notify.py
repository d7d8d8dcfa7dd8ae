"""{{name}}: a Slipway notify plugin, written in Python.

The agent calls `notify` for every state change of an app's deployments
(started, promoted, succeeded, failed, rolled-back, ...), in order, in the
background: a failure is logged, never fails the deployment. This one POSTs
the event as JSON to `url`. Replace it with your own.

Built by componentize-py against the WIT world `notify` in `wit/` (see
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
DESCRIPTION = "POSTs every deployment event as JSON to url."

# The agent checks every step's params against this schema when it loads the
# config, so a typo fails `slipway validate`, not a deployment.
PARAMS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://", "description": "URL to POST to; its host:port must be in grants.http"},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": 5000},
    },
}


class Plugin(exports.Plugin):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME,
            version=VERSION,
            api_version=API_VERSION,
            kinds=[types.StepKind.NOTIFY],
            params_schema=json.dumps(PARAMS_SCHEMA),
            description=DESCRIPTION,
        )


class NotifyStep(exports.NotifyStep):
    def notify(self, event: types.Event, params: str) -> None:
        """Return when delivered; raise Err(message) when not."""
        p = json.loads(params)
        url = p["url"]
        body = json.dumps({
            "app": event.app,
            "environment": event.environment,
            "deployment_id": event.deployment_id,
            "version": event.version,
            "state": event.state,
            "message": event.message,
        }).encode()
        try:
            status, _ = http_request("POST", url, p.get("timeout_ms", 5000), body, "application/json")
        except HttpFailed as e:
            raise Err(str(e))
        if not 200 <= status < 300:
            raise Err(f"POST {url}: status {status} (expected 2xx)")
        host.log(host.Level.DEBUG, "notified", [("state", event.state), ("url", url)])
{{helpers}}
