#!/bin/sh
# Build the {{name}} plugin: ./build.sh [OUT.wasm]   (default: ./{{name}}.wasm)
#
# Needs only python3 (with venv). On first use it installs the pinned
# componentize-py 0.25.1 (requirements.txt, pinned by the hashes of its
# wheels) into a venv under $SLIPWAY_TOOLCHAINS (default ./target/toolchains);
# point SLIPWAY_TOOLCHAINS at a shared directory to install it once for all
# your plugins.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/{{name}}.wasm}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
toolchains=${SLIPWAY_TOOLCHAINS:-$here/target/toolchains}
toolchain=$toolchains/componentize-py-0.25.1

mkdir -p "$toolchains" "$(dirname "$out")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$toolchains/componentize-py-0.25.1.lock"
    flock 9
fi
if [ ! -f "$toolchain/.installed" ]; then
    echo "{{name}}: installing componentize-py 0.25.1 into $toolchain" >&2
    rm -rf "$toolchain"
    python3 -m venv "$toolchain"
    "$toolchain/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --only-binary :all: -r "$here/requirements.txt"
    touch "$toolchain/.installed"
fi

# Build from a copy: componentize-py writes __pycache__ next to the app.
src=$here/target/python-src
rm -rf "$src"
mkdir -p "$src"
cp "$here/app.py" "$src/"
"$toolchain/bin/componentize-py" --quiet \
    -d "$here/wit" -w {{kind}} componentize -p "$src" app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "{{name}}: wrote $out" >&2
