// {{name}}: a Slipway notify plugin, written in JavaScript.
//
// The agent calls `notify` for every state change of an app's deployments
// (started, promoted, succeeded, failed, rolled-back, ...), in order, in the
// background: a failure is logged, never fails the deployment. This one
// POSTs the event as JSON to `url`. Replace it with your own.
//
// Built by componentize-js against the WIT world `notify` in `wit/` (see
// README.md). Imports name the versioned WIT interfaces.

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
    url: { type: 'string', pattern: '^https?://', description: 'URL to POST to; its host:port must be in grants.http' },
    timeout_ms: { type: 'integer', minimum: 1, maximum: 600000, default: 5000 },
  },
};

export const plugin = {
  describe() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      // The slipway:plugin API this plugin is built against (wit/).
      apiVersion: '{{api}}',
      kinds: ['notify'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'POSTs every deployment event as JSON to url.',
    };
  },
};

export const notifyStep = {
  // Returns when delivered; throws the reason when not.
  notify(event, params) {
    const p = JSON.parse(params);
    const body = JSON.stringify({
      app: event.app,
      environment: event.environment ?? null,
      deployment_id: event.deploymentId,
      version: event.version,
      state: event.state,
      message: event.message,
    });
    let answer;
    try {
      answer = httpRequest('POST', p.url, p.timeout_ms ?? 5000, body, 'application/json');
    } catch (e) {
      throw e.message;
    }
    if (answer.status < 200 || answer.status >= 300) {
      throw `POST ${p.url}: status ${answer.status} (expected 2xx)`;
    }
    log('debug', 'notified', [['state', event.state], ['url', p.url]]);
  },
};
{{helpers}}
