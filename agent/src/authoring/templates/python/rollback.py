"""{{name}}: a Slipway rollback plugin, written in Python.

The agent calls `rollback` to return an environment to its previous release
after a failed gate, when the health guard trips, or when a person runs
`slipway rollback`. This one runs `program` with `args`, with the release to
return to in its environment (`SLIPWAY_PREVIOUS_VERSION`,
`SLIPWAY_PREVIOUS_RELEASE_DIR`); the program must be in the plugin's
`grants.exec`. Replace it with your own.

Built by componentize-py against the WIT world `rollback` in `wit/` (see
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
DESCRIPTION = "Returns an environment to its previous release by running a program."

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
            kinds=[types.StepKind.ROLLBACK],
            params_schema=json.dumps(PARAMS_SCHEMA),
            description=DESCRIPTION,
        )


class RollbackStep(exports.RollbackStep):
    def rollback(self, ctx: types.StepContext) -> None:
        """Return when the environment is back; raise Err(message) when not."""
        p = json.loads(ctx.params)
        previous = ctx.previous_release
        if previous is None:
            raise Err("there is no previous release to return to")
        environment = ctx.environment or ""
        host.log(host.Level.INFO, "rolling back", [("to", previous.version), ("environment", environment)])
        tail = run(p["program"], p.get("args", []), [
            ("SLIPWAY_APP", ctx.app),
            ("SLIPWAY_ENVIRONMENT", environment),
            ("SLIPWAY_VERSION", ctx.release.version),
            ("SLIPWAY_PREVIOUS_VERSION", previous.version),
            ("SLIPWAY_PREVIOUS_RELEASE_DIR", previous.dir),
        ])
        host.log(host.Level.INFO, tail, [])
{{helpers}}
