#!/bin/sh
# Build the js-health plugin: ./build.sh [OUT.wasm]
#
# Installs the pinned componentize-js (package-lock.json) with `npm ci` into
# target/toolchains on first use; needs only node and npm. Skips the build
# when the sources, the WIT and the toolchain are unchanged since the last
# one. Safe to run in parallel: one build at a time holds the lock.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target/wasm-plugins/examples/js-health.wasm}
toolchain=$target/toolchains/componentize-js-0.23.0

mkdir -p "$target/toolchains" "$(dirname "$out")"
exec 9>"$target/toolchains/js-health.lock"
flock 9

lock_sum=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$toolchain/.installed" 2>/dev/null)" != "$lock_sum" ]; then
    echo "js-health: installing componentize-js 0.23.0 into $toolchain" >&2
    rm -rf "$toolchain"
    mkdir -p "$toolchain"
    cp "$here/package.json" "$here/package-lock.json" "$toolchain/"
    npm ci --prefix "$toolchain" --no-audit --no-fund --loglevel=error >&2
    echo "$lock_sum" >"$toolchain/.installed"
fi

inputs=$(
    cd "$repo"
    { echo "$toolchain"; cat "$here/health.js" "$here/build.mjs" "$here/build.sh" \
        "$here/package-lock.json"; find wit -name '*.wit' | LC_ALL=C sort | xargs cat; } |
        sha256sum | cut -d' ' -f1
)
if [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$inputs" ]; then
    echo "js-health: $out is up to date" >&2
    exit 0
fi

node "$here/build.mjs" "$toolchain" "$out.tmp" >&2
mv "$out.tmp" "$out"
echo "$inputs" >"$out.inputs"
echo "js-health: wrote $out" >&2
