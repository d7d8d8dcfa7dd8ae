#!/bin/sh
# Build the {{name}} plugin: ./build.sh [OUT.wasm]   (default: ./{{name}}.wasm)
#
# Needs node (20 or later) and npm. On first use it installs the pinned
# componentize-js 0.23.0 (package-lock.json) with `npm ci` into
# $SLIPWAY_TOOLCHAINS/componentize-js-0.23.0 (default ./target/toolchains);
# point SLIPWAY_TOOLCHAINS at a shared directory to install it once for all
# your plugins.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/{{name}}.wasm}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
toolchains=${SLIPWAY_TOOLCHAINS:-$here/target/toolchains}
toolchain=$toolchains/componentize-js-0.23.0

mkdir -p "$toolchains" "$(dirname "$out")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$toolchains/componentize-js-0.23.0.lock"
    flock 9
fi
# Any complete install of componentize-js 0.23.0 will do (another plugin's
# included): only the library is used.
if ! grep -qs '"version": "0.23.0"' \
    "$toolchain/node_modules/@bytecodealliance/componentize-js/package.json" ||
    [ ! -f "$toolchain/.installed" ]; then
    echo "{{name}}: installing componentize-js 0.23.0 into $toolchain" >&2
    rm -rf "$toolchain"
    mkdir -p "$toolchain"
    cp "$here/package.json" "$here/package-lock.json" "$toolchain/"
    npm ci --prefix "$toolchain" --no-audit --no-fund --loglevel=error >&2
    sha256sum "$here/package-lock.json" | cut -d' ' -f1 >"$toolchain/.installed"
fi

node "$here/build.mjs" "$toolchain" "$out.tmp" >&2
mv "$out.tmp" "$out"
echo "{{name}}: wrote $out" >&2
