#!/bin/sh
# Build the {{name}} plugin: ./build.sh [OUT.wasm]   (default: ./{{name}}.wasm)
#
# Needs rustup: rust-toolchain.toml pins the toolchain and adds the
# wasm32-wasip2 target on first use. Honours CARGO_TARGET_DIR.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/{{name}}.wasm}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
target=${CARGO_TARGET_DIR:-$here/target}
case $target in /*) ;; *) target=$(pwd)/$target ;; esac

cd "$here"
CARGO_TARGET_DIR=$target cargo build --release --target wasm32-wasip2
mkdir -p "$(dirname "$out")"
cp "$target/wasm32-wasip2/release/{{crate}}.wasm" "$out"
echo "{{name}}: wrote $out" >&2
