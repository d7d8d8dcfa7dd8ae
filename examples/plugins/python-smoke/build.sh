#!/bin/sh
# Build the python-smoke plugin: ./build.sh [OUT.wasm]
#
# Installs the pinned componentize-py (requirements.txt) into a venv under
# target/toolchains on first use; needs only python3. Skips the build when
# the sources, the WIT and the toolchain are unchanged since the last one.
# Safe to run in parallel: one build at a time holds the lock.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target/wasm-plugins/examples/python-smoke.wasm}
toolchain=$target/toolchains/componentize-py-0.25.1

mkdir -p "$target/toolchains" "$(dirname "$out")"
exec 9>"$target/toolchains/python-smoke.lock"
flock 9

if [ ! -f "$toolchain/.installed" ]; then
    echo "python-smoke: installing componentize-py 0.25.1 into $toolchain" >&2
    rm -rf "$toolchain"
    python3 -m venv "$toolchain"
    "$toolchain/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --only-binary :all: -r "$here/requirements.txt"
    touch "$toolchain/.installed"
fi

inputs=$(
    cd "$repo"
    { echo "$toolchain"; cat "$here/app.py" "$here/requirements.txt" "$here/build.sh";
      find wit -name '*.wit' | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1
)
if [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$inputs" ]; then
    echo "python-smoke: $out is up to date" >&2
    exit 0
fi

# Build from a copy: componentize-py writes __pycache__ next to the app.
src=$target/toolchains/python-smoke-src
rm -rf "$src"
mkdir -p "$src"
cp "$here/app.py" "$src/"
"$toolchain/bin/componentize-py" --quiet \
    -d "$repo/wit" -w smoke-test componentize -p "$src" app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$inputs" >"$out.inputs"
echo "python-smoke: wrote $out" >&2
