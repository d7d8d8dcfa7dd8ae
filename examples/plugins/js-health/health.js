// js-health: a Slipway health check written in JavaScript.
//
// One GET per check through `wasi:http/outgoing-handler`: healthy when the
// status is the expected one (any 2xx by default) and, if set, the body
// contains a substring. Built with componentize-js against `wit/`, world
// `health-check` (see README.md).
//
// It calls the wasi:http imports rather than `fetch`: fetch reports every
// failure as "NetworkError when attempting to fetch resource", while the
// error code says what happened (`HTTP-request-denied` when the host is not
// in the config's `grants.http`, `connection-refused`, ...), and that is
// what an operator reads in the deployment's reason.

import { log } from 'slipway:plugin/host@0.1.0';
import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingRequest, RequestOptions } from 'wasi:http/types@0.2.12';
import { now, subscribeDuration } from 'wasi:clocks/monotonic-clock@0.2.12';
import { poll } from 'wasi:io/poll@0.2.12';

const MAX_BODY = 256 * 1024;

const PARAMS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['url'],
  properties: {
    url: { type: 'string', pattern: '^https?://', description: 'URL to GET' },
    expect_status: {
      type: 'integer',
      minimum: 100,
      maximum: 599,
      description: 'exact status wanted (default: any 2xx)',
    },
    expect_body: { type: 'string', description: 'substring the body must contain' },
    timeout_ms: { type: 'integer', minimum: 1, maximum: 600000, default: 2000 },
  },
};

export const plugin = {
  describe() {
    return {
      name: 'js-health',
      version: '0.1.0',
      apiVersion: '0.1.0',
      kinds: ['health-check'],
      paramsSchema: JSON.stringify(PARAMS_SCHEMA),
      description: 'Health check in JavaScript: healthy while GET url answers as expected.',
    };
  },
};

export const healthCheckStep = {
  check(ctx) {
    const p = JSON.parse(ctx.params);
    const started = now();
    let status;
    let body;
    try {
      ({ status, body } = get(p.url, p.timeout_ms ?? 2000));
    } catch (e) {
      const message = `GET ${p.url}: ${e.message}`;
      log('warn', message, [['app', ctx.app]]);
      return { status: 'unhealthy', message };
    }
    const took = (now() - started) / 1_000_000n;
    const wanted = p.expect_status === undefined ? '2xx' : String(p.expect_status);
    const statusOk =
      p.expect_status === undefined ? status >= 200 && status < 300 : status === p.expect_status;
    let message;
    if (!statusOk) {
      message = `GET ${p.url}: status ${status} (expected ${wanted}) after ${took} ms`;
    } else if (p.expect_body !== undefined && !body.includes(p.expect_body)) {
      message = `GET ${p.url}: body does not contain ${JSON.stringify(p.expect_body)} (status ${status}, ${took} ms)`;
    } else {
      message = `GET ${p.url}: ${status} in ${took} ms (js)`;
      log('debug', message, [['status', String(status)]]);
      return { status: 'healthy', message };
    }
    log('warn', message, [['status', String(status)]]);
    return { status: 'unhealthy', message };
  },
};

// GET `url` within `timeoutMs`: { status, body } or an Error saying why not.
function get(url, timeoutMs) {
  const u = new URL(url);
  const timeout = BigInt(timeoutMs) * 1_000_000n;
  const deadline = now() + timeout;
  const request = new OutgoingRequest(new Fields());
  request.setMethod({ tag: 'get' });
  request.setScheme({ tag: u.protocol === 'https:' ? 'HTTPS' : 'HTTP' });
  request.setAuthority(u.host);
  request.setPathWithQuery(u.pathname + u.search);
  const options = new RequestOptions();
  options.setConnectTimeout(timeout);
  options.setFirstByteTimeout(timeout);
  options.setBetweenBytesTimeout(timeout);

  let future;
  try {
    future = handle(request, options);
  } catch (e) {
    throw new Error(describeError(e.payload));
  }
  using _future = future;
  wait(future.subscribe(), deadline, `no response in ${timeoutMs} ms`);
  const result = future.get();
  if (result?.tag !== 'ok') throw new Error('no response');
  if (result.val.tag !== 'ok') throw new Error(describeError(result.val.val));
  using response = result.val.val;
  return { status: response.status(), body: readBody(response, deadline) };
}

// Up to MAX_BODY bytes of the body, as text, before the deadline.
function readBody(response, deadline) {
  using body = response.consume();
  using stream = body.stream();
  const chunks = [];
  let size = 0;
  while (size < MAX_BODY) {
    let chunk;
    try {
      chunk = stream.read(BigInt(MAX_BODY - size));
    } catch (e) {
      if (e.payload?.tag === 'closed') break;
      throw new Error('reading the body failed');
    }
    if (chunk.length === 0) {
      wait(stream.subscribe(), deadline, 'body timed out');
    } else {
      chunks.push(chunk);
      size += chunk.length;
    }
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

// Block until `pollable` is ready, or throw `message` at `deadline`.
function wait(pollable, deadline, message) {
  using ready = pollable;
  const left = deadline > now() ? deadline - now() : 0n;
  using timer = subscribeDuration(left);
  if (!Array.from(poll([ready, timer])).includes(0)) throw new Error(message);
}

// A wasi:http error code in words; `HTTP-request-denied` is the agent's
// grant check.
function describeError(code) {
  if (code?.tag === 'HTTP-request-denied') {
    return "request denied by the agent (host not in this plugin's http grant)";
  }
  if (code?.tag === undefined) return String(code);
  const words = code.tag.replaceAll('-', ' ').toLowerCase();
  return code.val === undefined ? words : `${words}: ${JSON.stringify(code.val)}`;
}
