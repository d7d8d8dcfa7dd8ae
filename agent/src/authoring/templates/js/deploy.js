// {{name}}: a Slipway deploy plugin, written in JavaScript.
//
// The agent calls `deploy` to activate a release in an environment, before
// the app's `run` process (if any) is restarted. This one runs `program` with
// `args` in the release directory, with the release in its environment
// (`SLIPWAY_VERSION`, `SLIPWAY_RELEASE_DIR`, `SLIPWAY_ENVIRONMENT`); the
// program must be in the plugin's `grants.exec`. Replace it with your own.
//
// Built by componentize-js against the WIT world `deploy` in `wit/` (see
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
      kinds: ['deploy'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'Activates a release by running a program.',
    };
  },
};

export const deployStep = {
  // Returns when the release is active; throws the reason when not.
  deploy(ctx) {
    const p = JSON.parse(ctx.params);
    const environment = ctx.environment ?? '';
    log('info', 'deploying', [['version', ctx.release.version], ['environment', environment]]);
    const tail = run(p.program, p.args ?? [], [
      ['SLIPWAY_APP', ctx.app],
      ['SLIPWAY_ENVIRONMENT', environment],
      ['SLIPWAY_VERSION', ctx.release.version],
      ['SLIPWAY_RELEASE_DIR', ctx.release.dir],
    ]);
    log('info', tail, []);
  },
};
{{helpers}}
