// {{name}}: a Slipway build plugin, written in JavaScript.
//
// The agent calls `build` once per release, in the release directory (a copy
// of the app's source, writable for this step only); the same artifact is
// then promoted through every environment. This one runs `program` with
// `args` there; the program must be in the plugin's `grants.exec`. Replace
// it with your own.
//
// Built by componentize-js against the WIT world `build` in `wit/` (see
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
      kinds: ['build'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'Builds a release by running a program in its directory.',
    };
  },
};

export const buildStep = {
  // Returns the artifact when it built; throws the reason when not.
  build(ctx) {
    const p = JSON.parse(ctx.params);
    const args = p.args ?? [];
    log('info', 'building', [['version', ctx.release.version], ['program', p.program]]);
    run(p.program, args, [
      ['SLIPWAY_APP', ctx.app],
      ['SLIPWAY_VERSION', ctx.release.version],
      ['SLIPWAY_RELEASE_DIR', ctx.release.dir],
    ]);
    return { dir: ctx.release.dir, metadata: [['built-by', [p.program, ...args].join(' ')]] };
  },
};
{{helpers}}
