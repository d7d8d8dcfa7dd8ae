
// --- outgoing HTTP through wasi:http --------------------------------------
// The agent sends a request only to a host in the plugin's `grants.http`;
// any other host gets the error code `HTTP-request-denied`, not a socket.
// Resources are released with `using`.

const MAX_BODY = 256 * 1024;

// Send one GET or POST within `timeoutMs`: { status, body } (body as text),
// or throw an Error saying why there was no answer.
function httpRequest(method, url, timeoutMs, body = '', contentType = undefined) {
  const u = new URL(url);
  const what = `${method} ${url}`;
  const timeout = BigInt(timeoutMs) * 1_000_000n;
  const deadline = now() + timeout;
  const encoder = new TextEncoder();
  const bytes = encoder.encode(body);
  const headers = contentType ? [['content-type', encoder.encode(contentType)]] : [];
  // A length, not a chunked body: some servers read only the former.
  if (bytes.length > 0) headers.push(['content-length', encoder.encode(String(bytes.length))]);
  const request = new OutgoingRequest(Fields.fromList(headers));
  request.setMethod({ tag: method === 'POST' ? 'post' : 'get' });
  request.setScheme({ tag: u.protocol === 'https:' ? 'HTTPS' : 'HTTP' });
  request.setAuthority(u.host);
  request.setPathWithQuery(u.pathname + u.search);
  const options = new RequestOptions();
  options.setConnectTimeout(timeout);
  options.setFirstByteTimeout(timeout);
  options.setBetweenBytesTimeout(timeout);

  const outgoing = request.body();
  if (bytes.length > 0) {
    using stream = outgoing.write();
    for (let at = 0; at < bytes.length; at += 4096) {
      stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
    }
  }
  let future;
  try {
    future = handle(request, options);
    OutgoingBody.finish(outgoing, undefined);
  } catch (e) {
    throw new Error(`${what}: ${describeError(e.payload)}`);
  }
  using _future = future;
  wait(future.subscribe(), deadline, `${what}: no answer in ${timeoutMs} ms`);
  const result = future.get();
  if (result?.tag !== 'ok') throw new Error(`${what}: no answer`);
  if (result.val.tag !== 'ok') throw new Error(`${what}: ${describeError(result.val.val)}`);
  using response = result.val.val;
  return { status: response.status(), body: readBody(response, deadline, what) };
}

// Up to MAX_BODY bytes of the body, as text, before the deadline.
function readBody(response, deadline, what) {
  using incoming = response.consume();
  using stream = incoming.stream();
  const chunks = [];
  let size = 0;
  while (size < MAX_BODY) {
    let chunk;
    try {
      chunk = stream.read(BigInt(MAX_BODY - size));
    } catch (e) {
      if (e.payload?.tag === 'closed') break;
      throw new Error(`${what}: reading the body failed`);
    }
    if (chunk.length === 0) {
      wait(stream.subscribe(), deadline, `${what}: the body timed out`);
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

// A wasi:http error code in words.
function describeError(code) {
  if (code?.tag === 'HTTP-request-denied') return "denied: host not in this plugin's http grant";
  if (code?.tag === 'connection-refused') return 'connection refused';
  if (code?.tag === undefined) return String(code);
  return code.val === undefined ? code.tag : `${code.tag}: ${JSON.stringify(code.val)}`;
}
