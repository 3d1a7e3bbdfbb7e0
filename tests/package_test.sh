#!/usr/bin/env bash
# The installed liondg package works from another CMake project: install the
# build tree to a temporary prefix, configure, build and run examples/custom_backbone.
# Usage: package_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
SRC=${1:?source dir}
BUILD=${2:?build dir}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cmake --install "$BUILD" --prefix "$WORK/prefix" > /dev/null
cmake -S "$SRC/examples/custom_backbone" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$WORK/prefix;${CMAKE_PREFIX_PATH:-}" > "$WORK/configure.log" || { cat "$WORK/configure.log"; exit 1; }
cmake --build "$WORK/build" > "$WORK/build.log" || { cat "$WORK/build.log"; exit 1; }
"$WORK/build/custom_backbone"
