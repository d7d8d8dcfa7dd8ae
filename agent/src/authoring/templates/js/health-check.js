// {{name}}: a Slipway health-check plugin, written in JavaScript.
//
// The agent calls `check` at the environment's `interval` while a new
// release bakes and, after promotion, while it runs: healthy while `GET url`
// answers `expect_status`. Replace the probe with your own.
//
// Built by componentize-js against the WIT world `health-check` in `wit/`
// (see README.md). Imports name the versioned WIT interfaces.

import { log } from 'slipway:plugin/host@{{api}}';
import { handle } from 'wasi:http/outgoing-handler@{{wasi}}';
import { Fields, OutgoingBody, OutgoingRequest, RequestOptions } from 'wasi:http/types@{{wasi}}';
import { now, subscribeDuration } from 'wasi:clocks/monotonic-clock@{{wasi}}';
import { poll } from 'wasi:io/poll@{{wasi}}';

// The agent checks every step's params against this schema when it loads
// the config, so a typo fails `slipway validate`, not a deployment.
const PARAMS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['url'],
  properties: {
    url: { type: 'string', pattern: '^https?://', description: 'URL to GET; its host:port must be in grants.http' },
    expect_status: { type: 'integer', minimum: 100, maximum: 599, default: 200 },
    timeout_ms: { type: 'integer', minimum: 1, maximum: 600000, default: 2000 },
  },
};

export const plugin = {
  describe() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      // The slipway:plugin API this plugin is built against (wit/).
      apiVersion: '{{api}}',
      kinds: ['health-check'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'Healthy while GET url answers the expected status.',
    };
  },
};

export const healthCheckStep = {
  check(ctx) {
    const p = JSON.parse(ctx.params);
    const expectStatus = p.expect_status ?? 200;
    log('debug', 'checking', [['url', p.url], ['app', ctx.app]]);
    let status;
    try {
      ({ status } = httpRequest('GET', p.url, p.timeout_ms ?? 2000));
    } catch (e) {
      return { status: 'unhealthy', message: e.message };
    }
    if (status !== expectStatus) {
      return { status: 'unhealthy', message: `GET ${p.url}: status ${status} (expected ${expectStatus})` };
    }
    return { status: 'healthy', message: `GET ${p.url}: ${status}` };
  },
};
{{helpers}}
