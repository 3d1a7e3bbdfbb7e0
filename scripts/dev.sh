#!/usr/bin/env bash
# One entry point for set-up, build, the main job and the tests.
#
#   bash scripts/dev.sh run     install missing Debian packages, build, run the main job
#   bash scripts/dev.sh test    install missing Debian packages, build, run the test suite
#   bash scripts/dev.sh build   install missing Debian packages and build only
#   bash scripts/dev.sh deps    install missing Debian packages only
#   bash scripts/dev.sh sanitize  the whole test suite built with AddressSanitizer +
#                               UndefinedBehaviorSanitizer (in $ROOT/build-asan)
#
# Environment: BUILD_DIR (default build), BUILD_TYPE (default Release),
# CMAKE_PREFIX_PATH (e.g. a newer libtorch), JOBS (default: number of cores).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
BUILD_TYPE=${BUILD_TYPE:-Release}
JOBS=${JOBS:-$(nproc)}

# Debian packages the project needs to build, test and run its main job.
PACKAGES=(build-essential cmake ninja-build pkg-config libtorch-dev libgtest-dev nlohmann-json3-dev
          libcli11-dev zlib1g-dev dataset-fashion-mnist libtomlplusplus-dev gnuplot-nox libboost-math-dev
          libarchive-dev libjpeg62-turbo-dev libpng-dev libcurl4-openssl-dev libssl-dev python3-numpy
          libgloo-dev python3-pil)

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "[deps] all Debian packages present"
    return
  fi
  echo "[deps] installing: ${missing[*]}"
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {
  local generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  if [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE="$BUILD_TYPE"
  fi
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

run_main_job() {
  # The main job on the embedded default data set (Fashion-MNIST from the Debian package):
  # the `quick` comparison grid (he, lion-dg, lsuv, lion-lsuv on DenseNet-DS, 2 seeds),
  # resumable, ending with the Table 1 summary and the report's path.
  "$BUILD_DIR/liondg" grid --preset quick --jobs 2 --out "$ROOT/runs/quick"
}

run_tests() {
  # GoogleTest suite, command-line checks, and the installed package used from another project.
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
}

sanitize() {
  # ASan + UBSan over the library, the tool and every test (libtorch itself is not
  # instrumented). Any report fails the test that triggered it.
  local dir=${SANITIZE_BUILD_DIR:-$ROOT/build-asan}
  local generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  # -O1 -g1: quick to compile, line numbers in reports; NDEBUG as in release builds.
  local flags="-O1 -g1 -DNDEBUG -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  if [[ ! -f $dir/CMakeCache.txt ]]; then
    cmake -S "$ROOT" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="$flags" \
      -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
      -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
  fi
  cmake --build "$dir" -j "$JOBS"
  # detect_leaks=0: libtorch's global registries are never freed by design.
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$dir" --output-on-failure -j "$JOBS" -E "package_example"
}

case "${1:-}" in
  deps) deps ;;
  build) deps; build ;;
  run) deps; build; run_main_job ;;
  test) deps; build; run_tests ;;
  sanitize) deps; sanitize ;;
  *) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
