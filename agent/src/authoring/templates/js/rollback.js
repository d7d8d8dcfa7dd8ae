// {{name}}: a Slipway rollback plugin, written in JavaScript.
//
// The agent calls `rollback` to return an environment to its previous
// release after a failed gate, when the health guard trips, or when a person
// runs `slipway rollback`. This one runs `program` with `args`, with the
// release to return to in its environment (`SLIPWAY_PREVIOUS_VERSION`,
// `SLIPWAY_PREVIOUS_RELEASE_DIR`); the program must be in the plugin's
// `grants.exec`. Replace it with your own.
//
// Built by componentize-js against the WIT world `rollback` in `wit/` (see
// README.md). Imports name the versioned WIT interfaces.

import { exec, log } from 'slipway:plugin/host@{{api}}';

// The agent checks every step's params against this schema when it loads
// the config, so a typo fails `slipway validate`, not a deployment.
const PARAMS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['program'],
  properties: {
    program: { type: 'string', minLength: 1, description: 'program to run; must be in grants.exec' },
    args: { type: 'array', items: { type: 'string' }, default: [] },
  },
};

export const plugin = {
  describe() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      // The slipway:plugin API this plugin is built against (wit/).
      apiVersion: '{{api}}',
      kinds: ['rollback'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'Returns an environment to its previous release by running a program.',
    };
  },
};

export const rollbackStep = {
  // Returns when the environment is back; throws the reason when not.
  rollback(ctx) {
    const p = JSON.parse(ctx.params);
    const previous = ctx.previousRelease;
    if (previous === undefined) throw 'there is no previous release to return to';
    const environment = ctx.environment ?? '';
    log('info', 'rolling back', [['to', previous.version], ['environment', environment]]);
    const tail = run(p.program, p.args ?? [], [
      ['SLIPWAY_APP', ctx.app],
      ['SLIPWAY_ENVIRONMENT', environment],
      ['SLIPWAY_VERSION', ctx.release.version],
      ['SLIPWAY_PREVIOUS_VERSION', previous.version],
      ['SLIPWAY_PREVIOUS_RELEASE_DIR', previous.dir],
    ]);
    log('info', tail, []);
  },
};
{{helpers}}
