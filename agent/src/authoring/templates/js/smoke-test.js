// {{name}}: a Slipway smoke-test plugin, written in JavaScript.
//
// The agent calls `smokeTest` once after a release is activated in an
// environment, before it is promoted: it passes when `GET url` answers
// `expect_status` and, if set, the body contains `expect_body`. Replace the
// test with your own.
//
// Built by componentize-js against the WIT world `smoke-test` in `wit/`
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
    expect_body: { type: 'string', description: 'a substring the body must contain' },
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
      kinds: ['smoke-test'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'Passes when GET url answers the expected status (and body substring).',
    };
  },
};

export const smokeTestStep = {
  // Returns the report when it passes; throws the reason when it fails.
  smokeTest(ctx) {
    const p = JSON.parse(ctx.params);
    const expectStatus = p.expect_status ?? 200;
    log('info', 'smoke test', [['url', p.url], ['app', ctx.app]]);
    let answer;
    try {
      answer = httpRequest('GET', p.url, p.timeout_ms ?? 2000);
    } catch (e) {
      throw e.message;
    }
    if (answer.status !== expectStatus) {
      throw `GET ${p.url}: status ${answer.status} (expected ${expectStatus})`;
    }
    if (p.expect_body !== undefined && !answer.body.includes(p.expect_body)) {
      throw `GET ${p.url}: body does not contain ${JSON.stringify(p.expect_body)}`;
    }
    return `GET ${p.url}: ${answer.status}`;
  },
};
{{helpers}}
