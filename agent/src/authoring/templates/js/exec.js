
// --- running programs through the host's exec -----------------------------
// Only programs in the plugin's `grants.exec` run; they start in the release
// directory with an empty environment plus PATH, the plugin's `grants.env`
// and the `env` given here.

// Run `program` to the end: the tail of its output, or throw the reason it
// failed (denied, not found, non-zero exit, timed out).
function run(program, args, env) {
  let out;
  try {
    out = exec({ program, args, cwd: undefined, env, timeoutMs: undefined });
  } catch (e) {
    throw `${program}: ${e.payload ?? e}`;
  }
  const decoder = new TextDecoder();
  const text = decoder.decode(out.stdout) + decoder.decode(out.stderr);
  const tail = text.trim().split('\n').slice(-20).join('\n');
  if (out.timedOut) throw `${program}: timed out\n${tail}`;
  if (out.exitCode !== 0) {
    const status = out.exitCode === undefined ? 'killed by a signal' : `exit code ${out.exitCode}`;
    throw `${program}: ${status}\n${tail}`;
  }
  return tail;
}
