#!/usr/bin/env bash
# Builds liondg against the libtorch inside the installed pip torch (CUDA), into
# build-cuda/. Extra dependency prefixes (headers, libraries, CMake configs) can be
# given in LIONDG_EXTRA_PREFIX (';'-separated); a googletest source tree in
# LIONDG_GTEST_SRC is built and installed first when the system has none.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${LIONDG_CUDA_BUILD:-$ROOT/build-cuda}"
PY="${PYTHON:-python3}"
TORCH_PREFIX="$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')"
PREFIX="$TORCH_PREFIX"
[[ -n "${LIONDG_EXTRA_PREFIX:-}" ]] && PREFIX="$PREFIX;$LIONDG_EXTRA_PREFIX"
if [[ -n "${LIONDG_GTEST_SRC:-}" ]]; then
  cmake -S "$LIONDG_GTEST_SRC" -B /tmp/liondg-gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=/tmp/liondg-gtest -DBUILD_GMOCK=OFF >/dev/null
  cmake --build /tmp/liondg-gtest-build --target install >/dev/null
  PREFIX="$PREFIX;/tmp/liondg-gtest"
fi
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DLIONDG_USE_PCH=ON "$@"
cmake --build "$BUILD" -j "$(nproc)"
