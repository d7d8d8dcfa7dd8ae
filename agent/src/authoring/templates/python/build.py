"""{{name}}: a Slipway build plugin, written in Python.

The agent calls `build` once per release, in the release directory (a copy of
the app's source, writable for this step only); the same artifact is then
promoted through every environment. This one runs `program` with `args`
there; the program must be in the plugin's `grants.exec`. Replace it with
your own.

Built by componentize-py against the WIT world `build` in `wit/` (see
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
DESCRIPTION = "Builds a release by running a program in its directory."

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
            kinds=[types.StepKind.BUILD],
            params_schema=json.dumps(PARAMS_SCHEMA),
            description=DESCRIPTION,
        )


class BuildStep(exports.BuildStep):
    def build(self, ctx: types.StepContext) -> types.Artifact:
        """The artifact when it built; raise Err(message) when not."""
        p = json.loads(ctx.params)
        program, args = p["program"], p.get("args", [])
        host.log(host.Level.INFO, "building", [("version", ctx.release.version), ("program", program)])
        run(program, args, [
            ("SLIPWAY_APP", ctx.app),
            ("SLIPWAY_VERSION", ctx.release.version),
            ("SLIPWAY_RELEASE_DIR", ctx.release.dir),
        ])
        return types.Artifact(dir=ctx.release.dir, metadata=[("built-by", " ".join([program, *args]))])
{{helpers}}
