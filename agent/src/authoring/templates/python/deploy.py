"""{{name}}: a Slipway deploy plugin, written in Python.

The agent calls `deploy` to activate a release in an environment, before the
app's `run` process (if any) is restarted. This one runs `program` with
`args` in the release directory, with the release in its environment
(`SLIPWAY_VERSION`, `SLIPWAY_RELEASE_DIR`, `SLIPWAY_ENVIRONMENT`); the
program must be in the plugin's `grants.exec`. Replace it with your own.

Built by componentize-py against the WIT world `deploy` in `wit/` (see
README.md): the imports below are generated from it.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports import slipway_plugin_types as types

NAME = "{{name}}"
VERSION = "0.1.0"
# The slipway:plugin API this plugin is built against (wit/).
API_VERSION = "{{api}}"
DESCRIPTION = "Activates a release by running a program."

# The agent checks every step's params against this schema when it loads the
# config, so a typo fails `slipway validate`, not a deployment.
PARAMS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["program"],
    "properties": {
        "program": {"type": "string", "minLength": 1, "description": "program to run; must be in grants.exec"},
        "args": {"type": "array", "items": {"type": "string"}, "default": []},
    },
}


class Plugin(exports.Plugin):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME,
            version=VERSION,
            api_version=API_VERSION,
            kinds=[types.StepKind.DEPLOY],
            params_schema=json.dumps(PARAMS_SCHEMA),
            description=DESCRIPTION,
        )


class DeployStep(exports.DeployStep):
    def deploy(self, ctx: types.StepContext) -> None:
        """Return when the release is active; raise Err(message) when not."""
        p = json.loads(ctx.params)
        environment = ctx.environment or ""
        host.log(host.Level.INFO, "deploying", [("version", ctx.release.version), ("environment", environment)])
        tail = run(p["program"], p.get("args", []), [
            ("SLIPWAY_APP", ctx.app),
            ("SLIPWAY_ENVIRONMENT", environment),
            ("SLIPWAY_VERSION", ctx.release.version),
            ("SLIPWAY_RELEASE_DIR", ctx.release.dir),
        ])
        host.log(host.Level.INFO, tail, [])
{{helpers}}
