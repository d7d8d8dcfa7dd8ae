

# --- running programs through the host's exec -----------------------------
# Only programs in the plugin's `grants.exec` run; they start in the release
# directory with an empty environment plus PATH, the plugin's `grants.env`
# and the `env` given here.


def run(program: str, args: list[str], env: list[tuple[str, str]]) -> str:
    """Run `program` to the end: the tail of its output, or Err saying why
    it failed (denied, not found, non-zero exit, timed out)."""
    try:
        out = host.exec(host.ExecRequest(program=program, args=args, cwd=None, env=env, timeout_ms=None))
    except Err as e:
        raise Err(f"{program}: {e.value}")
    text = (out.stdout + out.stderr).decode("utf-8", errors="replace")
    tail = "\n".join(text.strip().splitlines()[-20:])
    if out.timed_out:
        raise Err(f"{program}: timed out\n{tail}")
    if out.exit_code != 0:
        status = "killed by a signal" if out.exit_code is None else f"exit code {out.exit_code}"
        raise Err(f"{program}: {status}\n{tail}")
    return tail
